"""The compiled path for the tracer (step.py): a function as ``torch.compile`` would split it for training
(AOTAutograd's forward and backward graphs, inductor's min-cut partition), run op by op on fake tensors, with
only the buffers inductor really materialises counted."""
from __future__ import annotations

import torch
import torch.fx
from torch.utils._pytree import tree_flatten

from ftstudio.engine.memory.tracer.live import LiveBytes


def aot(fn):
    """``fn`` as ``torch.compile`` would split it for training, run eagerly: AOTAutograd traces forward and backward
    together and inductor's min-cut partitioner decides which tensors the forward saves (cheap pointwise work is
    recomputed in backward); the two graphs then run op by op on the tracer's fake tensors. Inductor's kernel fusion
    is not modelled: only what is saved between forward and backward, which is what compiling changes for memory."""
    import functools

    from torch._functorch.aot_autograd import aot_function
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    def boxed(gm, example_inputs):
        def run(args):
            return _run_freeing(gm, args)

        def fused(args):
            live = _active_tracker()
            if live is None:
                return run(args)
            before, live.only = live.only, _extern_ops()
            try:
                out = run(args)
            finally:
                live.only = before
            live.count(tree_flatten(out)[0])        # the graph's outputs (and saved tensors) are buffers
            live.own(tree_flatten(out)[0])          # ... each a tensor of its own, not a view
            return out
        fused._boxed_call = True
        return fused
    from torch._inductor.decomposition import select_decomp_table   # inductor's decompositions: what min-cut sees

    return aot_function(fn, fw_compiler=boxed, bw_compiler=boxed, decompositions=select_decomp_table(),
                        partition_fn=functools.partial(min_cut_rematerialization_partition, compiler="inductor"))


def _run_freeing(gm, args: list):
    """Run an AOT graph as inductor's code does: the inputs taken out of the caller's list (``args.clear()``) and
    every value, inputs included, dropped after its last use; a saved activation dies once backward has read it,
    not when the whole backward graph ends."""
    holders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    env = dict(zip(holders, args))
    args.clear()
    run = _Interpreter(gm, garbage_collect_values=True)
    run.written = _padded_kernels_hold_inputs(run, _extern_ops())
    return run.run(initial_env=env, enable_io_processing=False)


class _Interpreter(torch.fx.Interpreter):
    written: frozenset = frozenset()      # fused kernels' outputs counted as they are written (padded rows)

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.written:
            live = _active_tracker()
            if live is not None:
                live.count([out])
        return out


PAD_BYTES = 128          # inductor pads a large buffer's rows to 128 bytes (config.comprehensive_padding)
PAD_MIN_ROW = 1024       # ... when a row holds at least this many elements (config.padding_stride_threshold)


def _padded(node) -> bool:
    v = node.meta.get("val")
    if not isinstance(v, torch.Tensor) or v.dim() < 2 or v.shape[-1] < PAD_MIN_ROW:
        return False
    return (int(v.shape[-1]) * v.element_size()) % PAD_BYTES != 0


def _padded_kernels_hold_inputs(run, extern) -> frozenset:
    """Inductor fuses a chain of pointwise ops into one kernel that reads the chain's inputs and writes its
    materialised output (the value an extern kernel or the graph's output reads); an input that dies there is
    overwritten in place (inplace_buffers), except when the output's rows are padded (a row not a multiple of 128
    bytes, e.g. GPT-2's 50257-word logits): then input and output live together. Op by op, such an input would be
    dropped at its last pointwise use, before the output exists; here it is dropped after the output is made."""
    def fused(n) -> bool:
        return n.op == "call_function" and getattr(n.target, "overloadpacket", None) not in extern

    def materialised(n):
        seen, todo = set(), [n]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            if any(u.op == "output" or not fused(u) for u in m.users):
                return m
            todo += list(m.users)
        return None

    moves = []
    for user, values in run.user_to_last_uses.items():
        if fused(user):
            out = materialised(user)
            if out is not None and out is not user and _padded(out):
                moves.append((user, out, values))
    for user, out, values in moves:
        run.user_to_last_uses[user] = []
        run.user_to_last_uses.setdefault(out, []).extend(values)
    return frozenset(out for _, out, _ in moves)


def _active_tracker():
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
    return next((m for m in reversed(_get_current_dispatch_mode_stack()) if isinstance(m, LiveBytes)), None)


def _extern_ops() -> frozenset:
    """Ops inductor runs as library kernels with buffers of their own (matmuls, attention, convolutions, scatters);
    the pointwise and reduction work between them is fused and allocates nothing beyond its outputs."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "_grouped_mm",
             "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_cudnn_attention_backward",
             "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
             "embedding_dense_backward", "scatter_add", "index_put", "_embedding_bag")
    return frozenset(getattr(aten, n) for n in names if hasattr(aten, n))


def compile_blocks_aot(model) -> int:
    """Each block of the model's block list through :func:`aot`, as the trainer compiles each block in place
    (checkpointing wrappers stay outside). Tensor arguments become graph inputs, the rest constants."""
    import functools
    import types

    from ftstudio.engine.models.structure import find_block_list
    from torch.utils._pytree import tree_flatten as flatten, tree_unflatten

    blocks = find_block_list(model)
    if blocks is None:
        return 0
    for block in blocks:
        names = [n for n, _ in block.named_parameters()]
        params = [p for _, p in block.named_parameters()]
        orig = block.forward
        # transformers 5.2x checkpoints a layer's ``forward`` itself (modeling_layers.forward_with_checkpointing,
        # made with functools.wraps) where 5.1x wrapped ``__call__``: the traced graph is the inner forward's and
        # the checkpoint stays outside it, as the trainer's recompute runs the compiled block again (a checkpoint
        # inside AOTAutograd's trace refuses the tracer's context_fn)
        inner = getattr(type(block).forward, "__wrapped__", None)
        outside = inner is not None and getattr(block, "gradient_checkpointing", False) and \
            callable(getattr(block, "_gradient_checkpointing_func", None))
        if outside:
            orig = types.MethodType(inner, block)
        cache: dict = {}

        def forward(self_, *args, _orig=orig, _names=names, _params=params, _cache=cache, _block=block, **kwargs):
            leaves, spec = flatten((args, kwargs))
            where = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
            key = (spec, tuple(None if i in where else repr(x) for i, x in enumerate(leaves)))
            if key not in _cache:
                n = len(_names)

                def run(*flat):
                    full = list(leaves)
                    for i, t in zip(where, flat[n:]):
                        full[i] = t
                    a, k = tree_unflatten(full, spec)
                    with torch.nn.utils.stateless._reparametrize_module(_block, dict(zip(_names, flat[:n]))):
                        return _orig(*a, **k)
                _cache[key] = aot(run)
            return _cache[key](*_params, *[leaves[i] for i in where])
        if outside:
            def checkpointed(self_, *args, _run=forward, **kwargs):
                if self_.training and torch.is_grad_enabled():
                    return self_._gradient_checkpointing_func(functools.partial(_run, self_, **kwargs), *args)
                return _run(self_, *args, **kwargs)
            block.forward = types.MethodType(checkpointed, block)
        else:
            block.forward = types.MethodType(forward, block)
    return len(blocks)


__all__ = ["aot", "compile_blocks_aot"]
