"""The attention heads and MLP neurons of a transformer, as slices of its parameters.

A unit (one attention head, one hidden neuron of an MLP) owns a block of rows or columns in a few
weights: a head its rows of the query, key and value projections (and their bias entries) and its
columns of the output projection; a neuron its row of the up (and gate) projection (and bias entry)
and its column of the down projection. `attention_heads` and `mlp_neurons` find them by the layers'
names, so the model stays as it is; the core imports torch only, so Hugging Face classes are
recognised by duck typing.

    family                        heads: q, k, v -> output                       neurons: up -> down
    Hugging Face GPT-2            attn.c_attn (Conv1D [E, 3E], q|k|v columns)    mlp.c_fc -> mlp.c_proj
                                  -> attn.c_proj (Conv1D [E, E], rows)           (Conv1D [in, out])
    Llama-style (Mistral, Qwen)   self_attn.{q,k,v}_proj -> o_proj               mlp.{gate,up}_proj -> down_proj
    BERT (RoBERTa), ViT           attention.self.{query,key,value} ->            intermediate.dense -> output.dense
                                  attention.output.dense
    OPT-style                     {q,k,v}_proj -> out_proj                       fc1 -> fc2
    modmask.models.transformer    Attention.{query,key,value} -> merge           ff1 -> ff2 (Encoder/DecoderLayer)
    torch nn.MultiheadAttention   in_proj_weight [3E, E] (or q/k/v_proj_weight)  nn.Transformer*Layer:
                                  (+ bias_k, bias_v) -> out_proj                 linear1 -> linear2

Grouped-query attention (Llama with num_key_value_heads < num_attention_heads): several query
heads read one key/value head, so those rows belong to no single query head. A head's slices are then
its query rows and output columns only; its key and value rows are left out (zeroing them would
remove the heads that share them too). With one key/value head per query head they are included.

The equality head masks rely on: the output projection is linear in its input, so zeroing a unit's
columns of it equals zeroing that unit's input features of it (`UnitSet.module`'s input block
[u size, (u+1) size)); the unit's other slices only change what flows into that block. One caveat:
nn.MultiheadAttention never calls its `out_proj` module (F.multi_head_attention_forward reads its
weight), and PyTorch's fused fast path of nn.TransformerEncoderLayer reads linear2's weight too, so a
hook on those modules never fires; mask their slices instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .selection import is_conv1d


@dataclass(frozen=True)
class Slice:
    """Where unit u of a unit set lies in one parameter: indices start + u size ... start + u size +
    size - 1 along `dim` (size = head_dim for heads, 1 for neurons)."""
    name: str   # parameter name, as model.named_parameters() gives it
    dim: int    # the parameter's dim along which the units run
    start: int  # first index of unit 0 along `dim`
    size: int   # indices per unit


@dataclass(frozen=True)
class UnitSet:
    """The heads of one attention module, or the hidden neurons of one MLP."""
    kind: str                   # "head" or "neuron"
    layer: int                  # 0-based index among the model's attention modules (resp. MLP blocks)
    module: str                 # path of the module whose input carries one block of `size` features
                                # per unit: the attention's output projection, or the MLP's down projection
    count: int                  # number of units
    size: int                   # input features of `module` per unit (head_dim, or 1)
    slices: tuple[Slice, ...]   # every weight and bias slice the units own

    @property
    def name(self) -> str:
        """A stable key, e.g. 'transformer.h.0.attn.c_proj:heads'."""
        return f"{self.module}:{self.kind}s"


# (query, key, value, output) projections inside an attention module, by submodule path
_ATTENTION = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),                                  # Llama, Mistral, Qwen, Gemma
    ("q_proj", "k_proj", "v_proj", "out_proj"),                                # OPT, BART, CLIP
    ("self.query", "self.key", "self.value", "output.dense"),                  # BERT, RoBERTa
    ("attention.query", "attention.key", "attention.value", "output.dense"),   # ViT
    ("query", "key", "value", "merge"),                                        # modmask.models.transformer
)
# (input projections, output projection) inside an MLP block
_MLP = (
    (("c_fc",), "c_proj"),                      # GPT-2
    (("gate_proj", "up_proj"), "down_proj"),    # Llama-style
    (("intermediate.dense",), "output.dense"),  # BERT, ViT
    (("fc1",), "fc2"),                          # OPT-style
    (("ff1",), "ff2"),                          # modmask.models.transformer
    (("linear1",), "linear2"),                  # nn.TransformerEncoderLayer / DecoderLayer
)
_HEAD_ATTRIBUTES = ("num_heads", "num_attention_heads", "heads", "n_head", "n_heads")


def _is_projection(module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def _features(module) -> tuple[int, int]:
    """(in, out) features of a Linear ([out, in]) or Conv1D ([in, out])."""
    shape = module.weight.shape
    return (shape[0], shape[1]) if is_conv1d(module) else (shape[1], shape[0])


def _find(module: nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


class _Names:
    """Canonical parameter names (named_parameters' own) of the model's tensors, by identity: a
    module reachable under two paths names its parameters once."""

    def __init__(self, model: nn.Module):
        self.by_id = {id(p): name for name, p in model.named_parameters()}

    def of(self, module: nn.Module, attribute: str) -> str | None:
        p = module._parameters.get(attribute)
        return None if p is None else self.by_id[id(p)]


def _rows(names: _Names, projection, start: int, size: int) -> list[Slice]:
    """The slices of a projection's output features [start + u size, ...): weight and bias."""
    out_dim = 1 if is_conv1d(projection) else 0
    found = [Slice(names.of(projection, "weight"), out_dim, start, size)]
    if isinstance(projection._parameters.get("bias"), nn.Parameter):
        found.append(Slice(names.of(projection, "bias"), 0, start, size))
    return found


def _columns(names: _Names, projection, size: int) -> Slice:
    """The slice of a projection's input features u size ... (the units' block of its input)."""
    return Slice(names.of(projection, "weight"), 0 if is_conv1d(projection) else 1, 0, size)


def _head_count(model: nn.Module, module: nn.Module, holders, path: str, heads: int | None) -> int:
    """The number of heads: `heads`, else an attribute of the attention module (or of the module
    holding its projections), else its config or the model's."""
    if heads is not None:
        return heads
    for holder in holders:
        for attribute in _HEAD_ATTRIBUTES:
            value = getattr(holder, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    for config in (getattr(module, "config", None), getattr(model, "config", None)):
        for attribute in ("num_attention_heads", "n_head", "num_heads", "n_heads"):
            value = getattr(config, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
    raise ValueError(f"the number of heads of the attention module {path!r} ({type(module).__name__}) was not "
                     f"found (no num_heads attribute, no config.num_attention_heads or config.n_head); pass "
                     f"it: MaskConfig(heads=N) (--set mask.heads=N), or attention_heads(model, heads=N)")


def _check_heads(path: str, features: int, count: int) -> int:
    if count <= 0 or features % count:
        raise ValueError(f"attention module {path!r}: {features} query features cannot be split into {count} "
                         f"heads; pass the right count: MaskConfig(heads=N) (--set mask.heads=N), or "
                         f"attention_heads(model, heads=N)")
    return features // count


def _packed_gpt2(model, path, module, names, heads) -> UnitSet | None:
    """GPT-2: c_attn (Conv1D [E, 3E], q|k|v column blocks; cross-attention: q_attn [E, E] and c_attn
    [E, 2E], k|v) and c_proj (Conv1D [E, E])."""
    packed, out, query = (getattr(module, n, None) for n in ("c_attn", "c_proj", "q_attn"))
    if not (is_conv1d(packed) and is_conv1d(out)):
        return None
    width = _features(out)[0]
    count = _head_count(model, module, [module], path, heads)
    head_dim = _check_heads(path, width, count)
    if is_conv1d(query):
        parts = [(query, 0), (packed, 0), (packed, width)]
    else:
        parts = [(packed, 0), (packed, width), (packed, 2 * width)]
    slices = [s for projection, start in parts for s in _rows(names, projection, start, head_dim)]
    return UnitSet("head", 0, f"{path}.c_proj", count, head_dim, (*slices, _columns(names, out, head_dim)))


def _torch_attention(path, module, names, heads) -> UnitSet:
    """nn.MultiheadAttention: in_proj_weight [3E, E] (q|k|v row blocks) or q/k/v_proj_weight, in_proj_bias
    [3E], optional bias_k / bias_v [1, 1, E], out_proj [E, E]."""
    width, count = module.embed_dim, heads or module.num_heads
    head_dim = _check_heads(path, width, count)
    if module._qkv_same_embed_dim:
        slices = [Slice(names.of(module, "in_proj_weight"), 0, i * width, head_dim) for i in range(3)]
    else:
        slices = [Slice(names.of(module, f"{p}_proj_weight"), 0, 0, head_dim) for p in "qkv"]
    if module.in_proj_bias is not None:
        slices += [Slice(names.of(module, "in_proj_bias"), 0, i * width, head_dim) for i in range(3)]
    slices += [Slice(names.of(module, b), 2, 0, head_dim) for b in ("bias_k", "bias_v")
               if module._parameters.get(b) is not None]
    slices.append(_columns(names, module.out_proj, head_dim))
    return UnitSet("head", 0, f"{path}.out_proj" if path else "out_proj", count, head_dim, tuple(slices))


def _separate(model, path, module, names, heads) -> UnitSet | None:
    """Separate q, k, v and output projections (the _ATTENTION table). Grouped-query attention: k and v
    rows are shared by several query heads and left out (module docstring)."""
    for paths in _ATTENTION:
        q, k, v, out = (_find(module, p) for p in paths)
        if not all(_is_projection(m) for m in (q, k, v, out)):
            continue
        holders = [module] + [m for m in (_find(module, paths[0].rpartition(".")[0]),) if m is not None]
        count = _head_count(model, module, holders, path, heads)
        head_dim = _check_heads(path, _features(q)[1], count)
        slices = _rows(names, q, 0, head_dim)
        kv_features = _features(k)[1]
        if kv_features == _features(q)[1]:
            slices += _rows(names, k, 0, head_dim) + _rows(names, v, 0, head_dim)
        elif kv_features % head_dim or count % (kv_features // head_dim):
            raise ValueError(f"attention module {path!r}: {kv_features} key features fit no grouping of {count} "
                             f"heads of {head_dim} features; pass the right count: MaskConfig(heads=N) "
                             f"(--set mask.heads=N), or attention_heads(model, heads=N)")
        slices.append(_columns(names, out, head_dim))
        prefix = f"{path}." if path else ""
        return UnitSet("head", 0, prefix + paths[3], count, head_dim, tuple(slices))
    return None


def _outermost(model: nn.Module, find) -> list[UnitSet]:
    """find(path, module) for every module in model order, skipping those inside a module found;
    layers numbered in that order."""
    found, inside = [], []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") or not p for p in inside):
            continue
        unit_set = find(path, module)
        if unit_set is not None:
            found.append(UnitSet(unit_set.kind, len(found), unit_set.module, unit_set.count, unit_set.size,
                                 unit_set.slices))
            inside.append(path)
    return found


def attention_heads(model: nn.Module, heads: int | None = None) -> list[UnitSet]:
    """The heads of every attention module of `model`, in model order (layer = the module's index among
    them); [] for a model without attention. `heads`: the number of heads of every attention module,
    for a model whose count is not found (a ValueError says so). See the module docstring for the
    families recognised and for grouped-query attention."""
    names = _Names(model)

    def find(path, module):
        if isinstance(module, nn.MultiheadAttention):
            return _torch_attention(path, module, names, heads)
        return _packed_gpt2(model, path, module, names, heads) or _separate(model, path, module, names, heads)

    return _outermost(model, find)


def mlp_neurons(model: nn.Module) -> list[UnitSet]:
    """The hidden neurons of every MLP block of `model`, in model order (layer = the block's index among
    them; size 1, one input feature of the down projection per neuron); [] for a model without one."""
    names = _Names(model)

    def find(path, module):
        for ups, down in _MLP:
            inputs, output = [_find(module, p) for p in ups], _find(module, down)
            if not all(_is_projection(m) for m in (*inputs, output)):
                continue
            hidden = _features(output)[0]
            if any(_features(m)[1] != hidden for m in inputs):
                continue
            slices = [s for m in inputs for s in _rows(names, m, 0, 1)] + [_columns(names, output, 1)]
            prefix = f"{path}." if path else ""
            return UnitSet("neuron", 0, prefix + down, hidden, 1, tuple(slices))
        return None

    return _outermost(model, find)


__all__ = ["Slice", "UnitSet", "attention_heads", "mlp_neurons"]
