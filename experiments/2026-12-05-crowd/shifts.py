"""Likelihood shifts of 24 base-model replies (6 prompts x 4 samples, 48 tokens) when a comment follows the request:
nearest-neighbour accuracy and mean correlation within and across paraphrase groups. Run as hidden_states.py."""
import torch, numpy as np, sys
from pathlib import Path
from assistant.config import ModelConfig, GenerationSettings
from assistant.model import load_model
from assistant.prompts import build_prompt
from assistant.generation import generate_texts
sys.path.insert(0, "experiments/2026-12-05-crowd")
loaded = load_model(ModelConfig(), Path(".cache/models"))
from paraphrases import groups
texts=[t for g in groups for t in g]; label=[i for i,g in enumerate(groups) for _ in g]
torch.manual_seed(0)
prompts=["How do I make a cup of tea?","What is a black hole?","How can I save money each month?","Tell me about Rome.","How do I start running?","What should I cook tonight?"]
refs=[]
for q in prompts:
    p=build_prompt(loaded,"",[{"role":"user","content":q}],48)
    for r in generate_texts(loaded,p,GenerationSettings(temperature=1.0,top_p=1.0,max_new_tokens=48),num_candidates=4):
        refs.append((q,r))
tok=loaded.tokenizer
def lp(q, instr, reply):
    content = q if not instr else f"{q}\n\n{instr}"
    p=build_prompt(loaded,"",[{"role":"user","content":content}],48).input_ids
    r=tok(reply, add_special_tokens=False)["input_ids"]
    ids=torch.tensor([list(p)+r])
    with torch.inference_mode():
        logits=loaded.model(ids).logits[0,len(p)-1:-1].float()
    return torch.log_softmax(logits,-1).gather(1,torch.tensor(r)[:,None]).mean().item()
base=np.array([lp(q,None,r) for q,r in refs])
V=np.stack([np.array([lp(q,t,r) for q,r in refs])-base for t in texts])
for centre in (False, True):
    X=V-V.mean(0) if centre else V.copy()
    X=X-X.mean(1,keepdims=True)  # correlation
    X/=np.linalg.norm(X,axis=1,keepdims=True)
    S=X@X.T; np.fill_diagonal(S,-9)
    acc=np.mean([label[j]==label[i] for i,j in enumerate(S.argmax(1))])
    n=len(texts)
    same=np.mean([S[i,j] for i in range(n) for j in range(n) if i!=j and label[i]==label[j]])
    diff=np.mean([S[i,j] for i in range(n) for j in range(n) if label[i]!=label[j]])
    print(f"centre={centre} nn_acc={acc:.2f} same={same:.2f} diff={diff:.2f}")
