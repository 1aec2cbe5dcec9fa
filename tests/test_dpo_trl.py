"""Our DPO against TRL's DPOTrainer on the same tiny model and pairs (a test extra: skipped without trl).

Both tokenise the conversation the same way (the chat template over prompt + answer, the answer's tokens and its end
of turn scored), which is checked first; then the loss, the rewards and one SGD step of lr 1 (the update is minus
the gradient) must agree within 1e-5, with the reference from a frozen model and precomputed."""
import copy
import json

import pytest
import torch

trl = pytest.importorskip("trl")

ROWS = [
    {"prompt": [{"role": "user", "content": "the cat is"}], "chosen": [{"role": "assistant", "content": "yes good"}],
     "rejected": [{"role": "assistant", "content": "no bad answer"}]},
    {"prompt": [{"role": "user", "content": "a dog"}], "chosen": [{"role": "assistant", "content": "good one"}],
     "rejected": [{"role": "assistant", "content": "bad"}]},
    {"prompt": [{"role": "user", "content": "one two three"}],
     "chosen": [{"role": "assistant", "content": "four five"}], "rejected": [{"role": "assistant", "content": "ten"}]},
]


@pytest.mark.parametrize("precompute", [False, True])
def test_loss_rewards_and_update_equal_trl(precompute, tiny_llama, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftstudio.core.config import DataConfig, RunConfig
    from ftstudio.engine.data import prepare_data
    from ftstudio.engine.train.dpo import PreferenceObjective, precompute_reference

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    policy = AutoModelForCausalLM.from_pretrained(str(tiny_llama), dtype=torch.float32)
    torch.manual_seed(1)
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a reference other than the policy: log-ratios not 0
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.eval()

    # TRL: one step of SGD, lr 1, no clipping, every pair in the one batch.
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(ROWS), max_steps=1,
                         learning_rate=1.0, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
                         max_grad_norm=1e9, weight_decay=0.0, beta=0.5, report_to=[], use_cpu=True, bf16=False,
                         precompute_ref_log_probs=precompute, save_strategy="no", logging_steps=1, seed=0)
    theirs_model = copy.deepcopy(policy)
    trainer = trl.DPOTrainer(model=theirs_model, ref_model=copy.deepcopy(ref), args=args,
                             train_dataset=Dataset.from_list(ROWS), processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        their_loss = float(trainer.compute_loss(trainer.model, batch))
    trainer._metrics["train"].clear()
    trainer.train()
    logged = next(x for x in trainer.state.log_history if "rewards/chosen" in x)  # the one step's metrics
    their_rewards = {k: logged[k] for k in ("rewards/chosen", "rewards/rejected", "rewards/margins",
                                            "rewards/accuracies", "logps/chosen", "logps/rejected")}

    # Ours on the same rows, through our data pipeline.
    data = tmp_path / "p.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    prepared = prepare_data(DataConfig(dataset=str(data), val_fraction=0.0, seq_len=64), tok, task="causal-lm",
                            seed=0)
    ids = batch["input_ids"]
    b = len(ROWS)
    theirs_seqs = sorted(tuple(int(t) for t, m in zip(row, mask) if m) for row, mask in
                         zip(ids.tolist(), batch["attention_mask"].tolist()))
    ours_seqs = sorted([tuple(ex["input_ids"]) for ex in prepared.train] +
                       [tuple(ex["rejected_input_ids"]) for ex in prepared.train])
    assert theirs_seqs == ours_seqs       # the same token ids
    their_scored = sorted(tuple(int(t) for t, m in zip(row, mask) if m) for row, mask in
                          zip(ids.tolist(), batch["completion_mask"].tolist()))
    our_scored = sorted([tuple(t for t in ex["labels"] if t != -100) for ex in prepared.train] +
                        [tuple(t for t in ex["rejected_labels"] if t != -100) for ex in prepared.train])
    assert their_scored == our_scored     # the same tokens scored
    assert ids.shape[0] == 2 * b

    train = RunConfig().replace(method="dpo", dpo_beta=0.5).train
    if precompute:
        precompute_reference(ref, prepared, device="cpu", batch_size=2)
    objective = PreferenceObjective(train, reference=None if precompute else ref)
    ours_model = copy.deepcopy(policy)
    loss = objective.loss(ours_model, prepared.collate(prepared.train))
    loss.backward()
    metrics = objective.take()
    assert abs(float(loss.detach()) - their_loss) < 1e-5
    for k, v in their_rewards.items():
        assert abs(metrics[k] - v) < 1e-5, (k, metrics[k], v)
    after = dict(trainer.model.named_parameters())
    for name, p in ours_model.named_parameters():
        ours_update = -p.grad
        their_update = after[name].detach() - dict(policy.named_parameters())[name].detach()
        assert torch.allclose(ours_update, their_update, atol=1e-5, rtol=0), \
            (name, (ours_update - their_update).abs().max())
