"""Texts of the Help menu: the seed's ideas, briefly, where a user meets them in the app."""

ABOUT = """<h3>FT Studio</h3>
<p>Full fine-tuning of pre-trained transformers: every weight of θ0 is trained on your data.</p>
<p>Pick a model, a dataset and a GPU; the memory bar tells you whether it fits before you start; the monitor
shows the loss, the learning rate and the memory while it trains; the Compare tab shows what changed.</p>
<p>Every run is a folder (config.yaml, metrics.jsonl, checkpoints/, final/) that <code>transformers</code> loads
as is, and every GUI session can be replayed headless: <i>File → Copy CLI command</i>.</p>"""

IDEAS = """<h3>The ideas behind the knobs</h3>
<p><b>Full fine-tuning</b> starts from the pre-trained weights θ0 and runs gradient descent on your data:
θ* = θ0 − η Σ ∇L. Starting from θ0 (not random weights) is what lets a few epochs on a few thousand rows
work. (ULMFiT, Howard &amp; Ruder 2018.)</p>
<p><b>The memory wall</b> (memory bar). Mixed-precision AdamW keeps 2N bytes of weights, 2N of gradients and
12N of optimizer state (fp32 master copy and two moments): <b>16N bytes</b> before activations, which grow as
s·b·d·L·k. A 7B model needs ~112 GB: more than an 80 GB card. The bar shows this textbook figure beside our
calibrated plan, and the measured truth during the run. Activation checkpointing, a chunked loss, a smaller
batch or a shorter seq_len trade speed for memory.</p>
<p><b>Catastrophic forgetting</b> (Regularize section, general-text curve on the loss plot). Updating every
weight lets general skills drift away. Remedies: a low learning rate, few epochs (1–3), mixing 5–10 % general
text into the batches (<i>mix_fraction</i>), and pulling the weights back toward θ0 with
λ/2·‖θ−θ0‖² (<i>l2sp</i>) or its Fisher-weighted form (<i>ewc</i>, Kirkpatrick et al. 2017).
<i>retention_eval</i> measures the forgetting as it happens.</p>
<p><b>The learning rate</b> (Training panel, LR plot) matters most. Fine-tuning wants 1e-5 to 5e-5, 10–100×
below pre-training. Linear warmup (3–10 % of the steps) then cosine decay is the standard schedule; constant
with warmup works for short runs. <b>Discriminative rates</b> (<i>layer_lr_decay</i> ξ, ULMFiT's 2.6) train
layer l from the top at lr·ξ^-l, so the general early layers move least.</p>
<p>The preset <i>Safe defaults (the seed)</i> sets LR 2e-5, warmup + cosine, 5 % warmup, 2 epochs.</p>"""
