"""Nearest-neighbour accuracy of the embedded model's mean hidden state (per layer) on paraphrases.py.
Run from the checkout: PYTHONPATH=. python experiments/2026-12-05-crowd/hidden_states.py"""
import torch, itertools, numpy as np
from pathlib import Path
from assistant.config import ModelConfig
from assistant.model import load_model
loaded = load_model(ModelConfig(), Path(".cache/models"))
import sys
sys.path.insert(0, "experiments/2026-12-05-crowd")
from paraphrases import groups
texts=[t for g in groups for t in g]; label=[i for i,g in enumerate(groups) for _ in g]
tok=loaded.tokenizer; model=loaded.model
def hidden(text, chat):
    if chat:
        ids = tok.apply_chat_template([{"role":"user","content":text}], add_generation_prompt=False)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids,"keys") else ids
    else:
        ids = tok(text)["input_ids"]
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return [h[0].mean(0).float().numpy() for h in out.hidden_states]
for chat in (False, True):
    H=[hidden(t,chat) for t in texts]
    for layer in range(0, len(H[0]), 3):
        X=np.stack([h[layer] for h in H]); X=X-X.mean(0); X/=np.linalg.norm(X,axis=1,keepdims=True)
        S=X@X.T; np.fill_diagonal(S,-9)
        nn=S.argmax(1); acc=np.mean([label[j]==label[i] for i,j in enumerate(nn)])
        same=np.mean([S[i,j] for i in range(len(texts)) for j in range(len(texts)) if i!=j and label[i]==label[j]])
        diff=np.mean([S[i,j] for i in range(len(texts)) for j in range(len(texts)) if label[i]!=label[j]])
        print(f"chat={chat} layer={layer} nn_acc={acc:.2f} same={same:.2f} diff={diff:.2f}")
