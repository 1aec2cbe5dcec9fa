"""torchao's float8 training layers on a model: which linear layers convert (:func:`module_filter`), the swap
(:func:`convert`) and its undoing (:func:`unconvert`). Here, beside the model code, because both the trainer's FP8
(train/fp8.py: when it turns on, the probe and the guard) and the memory plan's tracer (memory/tracer/step.py: the
converted step traced on fake tensors) convert the same layers the same way."""
from __future__ import annotations


def module_filter(model):
    """torchao's ``module_filter_fn``: linear layers with sizes divisible by 16, never the output embedding."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def keep(module, fqn: str) -> bool:
        if module is head:
            return False
        n_in, n_out = getattr(module, "in_features", 0), getattr(module, "out_features", 0)
        return n_in % 16 == 0 and n_out % 16 == 0
    return keep


def convert(model, recipe: str) -> int:
    """Swap the chosen linear layers for torchao's Float8Linear in place; returns how many."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear   # not re-exported by torchao.float8 (0.15)

    convert_to_float8_training(model, config=Float8LinearConfig.from_recipe_name(recipe),
                               module_filter_fn=module_filter(model))
    return sum(isinstance(m, Float8Linear) for m in model.modules())


def unconvert(model) -> int:
    """Float8Linear → nn.Linear over the same parameters (the probe failed); returns how many."""
    import torch
    from torchao.float8.float8_linear import Float8Linear

    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Float8Linear):
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                        device="meta")
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
                count += 1
    return count
