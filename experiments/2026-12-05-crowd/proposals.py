import logging, torch, random
from pathlib import Path
from assistant.config import ModelConfig, GenerationSettings
from assistant.model import load_model
from assistant.prompts import build_prompt
from assistant.generation import generate_texts
loaded = load_model(ModelConfig(), Path(".cache/models"))
torch.manual_seed(0)
asks = ["Give one short instruction, in a single sentence, for how an assistant should write its answers. Instruction:",
        "Write one sentence telling a chatbot how to change the style of its replies.",
        ]
for ask in asks:
    p = build_prompt(loaded, "", [{"role":"user","content":ask}], 32)
    outs = generate_texts(loaded, p, GenerationSettings(temperature=1.0, top_p=0.95, max_new_tokens=32), num_candidates=12)
    print("==", ask)
    for o in outs: print(" -", o.replace("\n"," ")[:150])
