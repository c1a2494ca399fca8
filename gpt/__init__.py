"""The model runtime: everything that touches a GPT's weights, shared by training and serving.

- :mod:`core.model_config` the model's shape; :mod:`gpt.model` the network, its KV cache and its one
  incremental forward (per-row positions); :mod:`gpt.losses` the fused losses;
- :mod:`gpt.sampling` the one sampler (per-row parameters, one generator per choice);
- :mod:`gpt.generate` the one generation loop, and text generation on top of it;
- :mod:`gpt.tokenizer`, :mod:`gpt.chat` the tokenizer and the chat template;
- :mod:`gpt.model_io`, :mod:`gpt.hf` model artifacts, and the Hugging Face export and import.

It depends on ``core`` and ``catalog`` only; ``training`` and ``serving`` sit on top of it.
"""
