"""Files copied verbatim into a `gptlab export --to hf` folder for models GPT2LMHeadModel cannot hold.
They import only torch and transformers (never gptlab), so the folder works on a machine without gptlab:
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)`."""
