"""Texts of the Help menu: the seed's ideas, briefly, where a user meets them in the app."""

def about_text() -> str:
    """About's text with the version of FT Studio and of what it runs on (what a bug report needs)."""
    import platform

    import PySide6

    from ftstudio import __version__
    return ABOUT.replace("<h3>FT Studio</h3>", f"<h3>FT Studio {__version__}</h3>") + (
        f"<p><small>Version {__version__} · Python {platform.python_version()} · PySide6 {PySide6.__version__}"
        "</small></p>")


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

FORGETTING = """<h3>Forgetting and its remedies</h3>
<p>Full fine-tuning moves every weight away from the pre-trained θ0. The further it drifts, the more of the
model's general skill can be lost: <b>catastrophic forgetting</b>. FT Studio lets you see it happen and
lets you pull against it.</p>
<p><b>Seeing it.</b> <i>retention_eval</i> measures loss on general text (a bundled set, or
<i>retention_data</i>) before training and at every evaluation: the green <i>general text (forgetting)</i>
curve on the loss plot. A rising curve while the task loss falls is forgetting. The <i>drift</i> heat strip
shows ‖θ−θ0‖/‖θ0‖ per layer over the steps (set <i>drift_every</i>, or use l2sp/ewc), bottom (embeddings)
to top (head).</p>
<p><b>The cheap remedies.</b> A <b>low learning rate</b> (1e-5 to 5e-5) and <b>short training</b> (1–3 epochs,
or <i>max_steps</i>) keep θ near θ0 simply by taking fewer, smaller steps. <b>Data mixing</b>
(<i>mix_fraction</i>, 5–10 %) replays general text inside every batch, so the old skill keeps getting
gradient.</p>
<p><b>L2-SP vs weight decay: different things.</b> AdamW's <i>weight_decay</i> is decoupled: each step
shrinks θ by lr·wd·θ, a pull toward <b>zero</b>, applied outside the adaptive update. It regularises a
model trained from scratch; for fine-tuning, zero is not where the knowledge is. <b>L2-SP</b> (<i>l2sp</i> λ)
adds λ/2·‖θ−θ0‖² to the loss: a pull toward the <b>pre-trained weights θ0</b> (Li et al. 2018). Here the
penalty goes through the optimizer with the task gradient. It needs a copy of θ0 (<i>l2sp_anchor</i>:
fp32 or bf16 on the GPU, or in CPU memory), which the memory bar counts.</p>
<p><b>EWC</b> (<i>ewc</i> λ, Kirkpatrick et al. 2017) weights that pull per parameter by a diagonal Fisher
F, measured on the general text before training: λ/2·Σ F_i(θ_i−θ0_i)². Weights that matter to the old
skill are held hard, the rest move freely. F costs another copy of the weights' size.</p>
<p><b>Discriminative rates</b> (<i>layer_lr_decay</i> ξ, ULMFiT's 2.6): the layer at depth l from the top
trains at lr·ξ^-l, so the general early layers (and the embeddings) move least and the head most. The
Training panel draws each layer's rate as a bar; with many layers keep ξ small (1.1–1.3), since ξ^-l
quickly freezes the bottom.</p>"""
