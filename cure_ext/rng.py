"""`OwnStream`: the random stream of the forwards `CURE` runs (Dropout, and anything else drawing from torch's
default generators), kept apart from the caller's.

For the length of a step it is set on torch's default CPU generator and on the default generator of every
CUDA device the step uses, then saved, and the caller's states are put back. The step's randomness then
depends on neither the user's loop nor anything else in the process, and lives in `CURE.state_dict()`.
Getting and setting a generator's state is host-side bookkeeping (a CUDA generator's state is its seed and
offset): no device synchronisation.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def cuda_indices(devices: Iterable[torch.device]) -> list:
    return sorted({d.index for d in devices if d.type == "cuda"})


class OwnStream:
    def __init__(self, seed: int, devices: Iterable[torch.device]):
        self._seed = seed
        self._states: dict = {}  # "cpu" / "cuda:<index>" -> the generator state
        for key in ["cpu", *(f"cuda:{i}" for i in cuda_indices(devices))]:
            self._state(key)

    def _state(self, key: str) -> torch.Tensor:
        # A device first used after construction (or absent from a loaded state) starts from the seed.
        if key not in self._states:
            self._states[key] = torch.Generator(key).manual_seed(self._seed).get_state()
        return self._states[key]

    @contextlib.contextmanager
    def active(self, devices: Iterable[torch.device]) -> Iterator[None]:
        """Torch's default generators run this stream inside the block; it advances only if the block
        completes (a refused step draws nothing that stays)."""
        cuda = cuda_indices(devices)
        with torch.random.fork_rng(devices=cuda):
            torch.set_rng_state(self._state("cpu"))
            for i in cuda:
                torch.cuda.set_rng_state(self._state(f"cuda:{i}"), i)
            yield
            self._states["cpu"] = torch.get_rng_state()
            for i in cuda:
                self._states[f"cuda:{i}"] = torch.cuda.get_rng_state(i)

    def state_dict(self) -> dict:
        return dict(self._states)

    def check(self, states, who: str) -> None:
        """Raise, naming the entry, unless `states` is a stream's state_dict whose entries for the devices
        this stream runs on can be set (entries for other devices are carried along, unused)."""
        if not isinstance(states, dict) or not all(
                isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in states.values()):
            raise ValueError(f"{who}: forward_rng must be a dict of generator states (uint8 tensors)")
        for key in set(states) & set(self._states):
            try:
                torch.Generator(key).set_state(states[key])
            except RuntimeError as e:  # a state of the wrong size
                raise ValueError(f"{who}: forward_rng[{key!r}] is not a {key} generator state "
                                 f"({str(e).splitlines()[0][:200]})") from None

    def load_state_dict(self, states: dict) -> None:
        self._states = {key: state.clone() for key, state in states.items()}
