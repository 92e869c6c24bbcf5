"""The GPU checks behind ``scripts/gpu/``, each a command that runs on a bare GPU machine after ``make setup`` and has a
CPU smoke mode that the test suite runs.

- SAGE's triton step (``check_sage_gpu.py``): optimizer step times eager and captured in a CUDA graph against fused
  AdamW, memory, parity, host-device synchronisations (:mod:`.steps`), FSDP training and resume (:mod:`.fsdp`),
  end-to-end ``fairseq-train`` words/s on a synthetic corpus (:mod:`.train_speed`), the whole check with its JSON and
  Markdown report (:mod:`.check`);
- the full-size IWSLT'14 configs for a short budget, curves and projected GPU-hours (``check_iwslt14.py``,
  :mod:`.iwslt14`; needs the prepared IWSLT'14 data);
- SAGE's training curves in each mixed-precision mode against fp32 (``check_precision.py``, :mod:`.precision`).
"""
