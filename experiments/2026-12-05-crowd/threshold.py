"""Pair precision and recall of the draft Shifts (16 replies: 4 prompts x 4 samples, 40 tokens) at thresholds, two
reference seeds, and its cost per comment. Run as hidden_states.py."""
import torch, sys, time
from pathlib import Path
sys.path.insert(0, "experiments/2026-12-05-crowd")
from paraphrases import groups
from assistant.config import ModelConfig
from assistant.model import load_model
from shifts_draft import Shifts
loaded = load_model(ModelConfig(), Path(".cache/models"))
torch.set_num_threads(1)
texts=[t for g in groups for t in g]; label=[i for i,g in enumerate(groups) for _ in g]
for seed in (0, 1):
    s=Shifts(loaded, seed=seed); t=time.time(); s.vectors(texts[:1]); t1=time.time()-t
    t=time.time(); V=s.vectors(texts); t2=(time.time()-t)/(len(texts)-1)
    S=V@V.T; n=len(texts)
    print(f"seed {seed}: references {len(s._references)} in {t1:.1f}s, {t2*1000:.0f} ms per comment")
    nn=[max((j for j in range(n) if j!=i), key=lambda j:S[i,j]) for i in range(n)]
    print(" nn acc", sum(label[i]==label[j] for i,j in enumerate(nn))/n)
    for th in (0.4,0.5,0.6,0.7,0.8):
        pairs=[(i,j) for i in range(n) for j in range(i+1,n) if S[i,j]>=th]
        tp=sum(label[i]==label[j] for i,j in pairs); pos=sum(label[i]==label[j] for i in range(n) for j in range(i+1,n))
        print(f" th {th}: pairs {len(pairs)} precision {tp/max(1,len(pairs)):.2f} recall {tp/pos:.2f}")
