"""Graph -> the loop nests of each native entry point, with optimizer updates.

Entry points (each becomes ONE native function):
  predict        the outputs, from the inputs they need
  evaluate       the outputs and the loss
  value_and_grad forward + backward (gradients left in grad:P buffers)
  train_step     forward + backward + optimizer update, in place on the parameters
Optimizer hyperparameters are 0-d `hyper` tensors (changed without recompiling);
optimizer state (momentum, Adam moments) are `state` tensors.
"""
from dataclasses import dataclass

import sympy

from .autodiff import differentiate
from .index_ir import Access, Comprehension, TensorInfo, access_symbol, index_symbols

HYPERS = {"sgd": ["lr"], "momentum": ["lr", "beta"],
          "adam": ["lr", "beta1", "beta2", "eps", "correction1", "correction2"]}


@dataclass
class Lowered:
    tensors: dict              # every buffer: inputs, params, consts, values, grads, state...
    entries: dict              # entry name -> [Comprehension]
    grads: dict                # param -> grad buffer
    optimizer: str
    hypers: dict               # hyper name -> buffer name
    states: list               # optimizer state buffers


def lower(model, optimizer="sgd", simplify=True):
    tensors = dict(model.tensors)
    entries = {"predict": _needed(model.forward, set(model.outputs))}
    grads, hypers, states = {}, {}, []
    if model.loss is not None:
        entries["evaluate"] = _needed(model.forward, set(model.outputs) | {model.loss})
        if model.params:
            backward = differentiate(model, simplify=simplify)
            tensors.update(backward.tensors)
            grads = {p: backward.grads[p] for p in model.params}
            forward = _needed(model.forward, {model.loss} | set(model.outputs))
            entries["value_and_grad"] = forward + backward.comps
            updates = []
            for name in HYPERS[optimizer]:
                hypers[name] = f"hyper:{name}"
                tensors[hypers[name]] = TensorInfo(hypers[name], (), "f32", "hyper")
            for p in model.params:
                comps, new_states = optimizer_update(optimizer, p, grads[p], tensors[p].shape, hypers)
                for s in new_states:
                    tensors[s] = TensorInfo(s, tensors[p].shape, "f32", "state")
                states += new_states
                updates.append((p, comps))
            entries["train_step"] = _place_updates(forward + backward.comps, updates, grads)
    return Lowered(tensors, entries, grads, optimizer, hypers, states)


def _needed(comps, wanted):
    """The comps that compute `wanted` (dead code elimination), in order."""
    needed, keep = set(wanted), []
    for c in reversed(comps):
        if c.out in needed or (c.argmax and c.argmax in needed):
            keep.append(c)
            needed.update(c.reads)
    return keep[::-1]


def _reader(name, index):
    s = access_symbol(name)
    return s, {s: Access(name, index)}


def optimizer_update(kind, param, grad, shape, hypers):
    """Elementwise in-place update loop nests of one parameter."""
    idx = index_symbols([f"u{k}" for k in range(len(shape))])
    p, pa = _reader(param, idx)
    g, ga = _reader(grad, idx)
    h = {}
    ha = {}
    for name, buf in hypers.items():
        h[name], acc = _reader(buf, ())
        ha.update(acc)
    if kind == "sgd":
        return [Comprehension(param, idx, p - h["lr"] * g, {**pa, **ga, **ha})], []
    if kind == "momentum":
        v_name = f"state:{param}.velocity"
        v, va = _reader(v_name, idx)
        new_v = Comprehension(v_name, idx, h["beta"] * v + g, {**va, **ga, **ha})
        v2, va2 = _reader(v_name, idx)
        step = Comprehension(param, idx, p - h["lr"] * v2, {**pa, **va2, **ha})
        return [new_v, step], [v_name]
    if kind == "adam":
        m_name, v_name = f"state:{param}.m", f"state:{param}.v"
        m, ma = _reader(m_name, idx)
        v, va = _reader(v_name, idx)
        new_m = Comprehension(m_name, idx, h["beta1"] * m + (1 - h["beta1"]) * g, {**ma, **ga, **ha})
        new_v = Comprehension(v_name, idx, h["beta2"] * v + (1 - h["beta2"]) * g ** 2,
                              {**va, **ga, **ha})
        m2, ma2 = _reader(m_name, idx)
        v2, va2 = _reader(v_name, idx)
        step = Comprehension(param, idx, p - h["lr"] * h["correction1"] * m2 /
                             (sympy.sqrt(h["correction2"] * v2) + h["eps"]), {**pa, **ma2, **va2, **ha})
        return [new_m, new_v, step], [m_name, v_name]
    raise ValueError(f"unknown optimizer {kind}")


def _place_updates(comps, updates, grads):
    """Put each parameter's update right after the last comp that needs its old value or
    writes its gradient, so the update can fuse into the weight-gradient loop nest."""
    placed = {i: [] for i in range(len(comps))}
    for param, update in updates:
        last = max(i for i, c in enumerate(comps)
                   if c.out == grads[param] or param in c.reads)
        placed[last] += update
    out = []
    for i, c in enumerate(comps):
        out.append(c)
        out += placed[i]
    return out
