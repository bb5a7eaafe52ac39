"""Which devices a run uses: platform choice, device meshes and batch sharding.

jaxmm runs on whatever JAX runs on. Nothing here (or elsewhere in jaxmm) assumes a CPU: the
platform is a choice (``"cpu"``, ``"gpu"``, ``"tpu"``; ``None`` = JAX's default backend, the
accelerator when there is one), and distribution is JAX's own -- a ``jax.sharding.Mesh`` of
devices and ``NamedSharding``/``shard_map`` of a batch axis; several hosts join with
``jax.distributed.initialize`` before anything else touches JAX, after which ``jax.devices()``
lists the devices of every process and the same code shards over all of them.

Testing on one CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before JAX
initialises, i.e. in a fresh process) splits the host into 8 CPU devices.

``request_host_devices`` is the one runtime setting jaxmm's command lines make: one CPU host
device per core, so that independent work (PPO's seeds, benchmark shards) runs on every core.
Nothing else is configured: no XLA flag, no async-dispatch switch. (Earlier versions ran with
``--xla_cpu_multi_thread_eigen=false`` against a wedge of XLA's CPU runtime; the cause was a
batched LAPACK call, which ``jaxmm.linalg`` now keeps out of every program.)
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "HOST_DEVICE_FLAG",
    "PLATFORMS",
    "add_arguments",
    "available_platforms",
    "batch_spec",
    "cpu_cores",
    "describe",
    "from_arguments",
    "mesh",
    "request_host_devices",
    "select",
    "shard_batch",
]

PLATFORMS = ("cpu", "gpu", "tpu")
HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def cpu_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def request_host_devices(count: int | None = None) -> int | None:
    """Ask XLA to split the CPU into ``count`` host devices (default: one per core).

    It appends ``--xla_force_host_platform_device_count`` to ``XLA_FLAGS``, which XLA reads
    when its backend starts, so call it before anything uses a device (importing ``jax`` is
    fine; ``jax.devices()``, any computation and importing gymnax are not). A count the user
    already set in ``XLA_FLAGS`` wins. Accelerators are not affected.

    Returns:
        The count requested, or None when ``XLA_FLAGS`` already set one.

    Raises:
        ValueError: if ``count`` is not an integer >= 1.
        RuntimeError: if JAX's backend has already started (the flag would be ignored).
    """
    from jax._src import xla_bridge

    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count = {count!r}; allowed: None (one per core) or an integer >= 1")
    flags = os.environ.get("XLA_FLAGS", "")
    if HOST_DEVICE_FLAG in flags:
        return None
    if xla_bridge.backends_are_initialized():
        raise RuntimeError(
            "request_host_devices() must run before JAX's backend starts (before any device is "
            f"used); set XLA_FLAGS={HOST_DEVICE_FLAG}=N in the environment instead"
        )
    count = cpu_cores() if count is None else count
    os.environ["XLA_FLAGS"] = f"{flags} {HOST_DEVICE_FLAG}={count}".strip()
    return count


def available_platforms() -> list[str]:
    """The platforms of ``PLATFORMS`` that have at least one device in this process."""
    found = []
    for platform in PLATFORMS:
        try:
            if jax.devices(platform):
                found.append(platform)
        except RuntimeError:
            continue
    return found


def select(platform: str | None = None, count: int | None = None) -> list[jax.Device]:
    """The first ``count`` devices of ``platform`` (global devices: every process's).

    Args:
        platform: ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``None`` for JAX's default backend.
        count: how many devices (``None``: all of them), an integer >= 1.

    Raises:
        ValueError: naming the argument, if the platform is unknown or has no devices here, or
            if it has fewer than ``count`` devices.
    """
    if platform is not None and platform not in PLATFORMS:
        raise ValueError(f"platform = {platform!r}; allowed: None or one of {PLATFORMS}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"devices = {count!r}; allowed: None (all) or an integer >= 1")
    try:
        devices = jax.devices(platform)
    except RuntimeError as error:
        raise ValueError(
            f"platform = {platform!r} has no devices in this process; available: "
            f"{available_platforms()} ({error})"
        ) from None
    if count is None:
        return list(devices)
    if count > len(devices):
        name = platform or jax.default_backend()
        raise ValueError(
            f"devices = {count}; allowed: at most {len(devices)}, the number of {name} devices "
            f"(on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts)"
        )
    return list(devices[:count])


def mesh(devices: Sequence[jax.Device] | Mesh | None, axis_name: str) -> Mesh | None:
    """A 1-D ``Mesh`` named ``axis_name`` over ``devices`` (a ``Mesh`` passes unchanged; ``None``
    stays ``None``: the default device, no sharding)."""
    if devices is None or isinstance(devices, Mesh):
        return devices
    devices = list(devices)
    if not devices:
        raise ValueError("devices is empty; pass None for the default device or a device list")
    return Mesh(np.array(devices), (axis_name,))


def batch_spec(mesh: Mesh) -> PartitionSpec:
    """The ``PartitionSpec`` that splits a leading batch axis over every axis of ``mesh``."""
    names = tuple(mesh.axis_names)
    return PartitionSpec(names[0] if len(names) == 1 else names)


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` with its leading axis split over ``mesh`` (``NamedSharding``).

    Raises ``ValueError`` unless every leading axis is divisible by the number of devices. The
    leaves must be addressable from this process (single host); on several hosts build global
    arrays with ``jax.make_array_from_callback`` instead.
    """
    size = mesh.size
    for leaf in jax.tree.leaves(tree):
        if np.ndim(leaf) == 0 or np.shape(leaf)[0] % size:
            raise ValueError(
                f"a leaf of shape {np.shape(leaf)} cannot be split over {size} devices; allowed: "
                f"a leading batch axis divisible by {size}"
            )
    return jax.device_put(tree, NamedSharding(mesh, batch_spec(mesh)))


def describe(devices: Sequence[jax.Device] | Mesh | None = None) -> dict[str, Any]:
    """What a run ran on: platform, device kind, device counts and processes (for results)."""
    if isinstance(devices, Mesh):
        devices = list(devices.devices.flat)
    used = list(devices) if devices is not None else [jax.devices()[0]]
    return {
        "platform": used[0].platform,
        "device_kind": used[0].device_kind,
        "devices_used": len(used),
        "devices_available": len(jax.devices(used[0].platform)),
        "local_devices": len(jax.local_devices(backend=used[0].platform)),
        "process_count": jax.process_count(),
        "process_index": jax.process_index(),
        "default_backend": jax.default_backend(),
        "used": [str(d) for d in used],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--platform``/``--device`` (cpu, gpu or tpu; default: JAX's default backend) and
    ``--devices N`` (shard the batch over N devices of that platform; 0 = all)."""
    parser.add_argument(
        "--platform",
        "--device",
        dest="platform",
        choices=PLATFORMS,
        default=None,
        help="JAX platform to run on (default: JAX's default backend)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        metavar="N",
        help="shard the batch over N devices of the platform (0: all; default 1)",
    )


def from_arguments(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> list[jax.Device] | None:
    """The devices ``add_arguments``'s flags ask for, or a ``parser.error`` naming the flag.

    With an explicit platform, that platform's first device becomes JAX's default device for the
    rest of the process. Returns ``None`` (default device, nothing sharded) for the defaults.
    """
    if args.devices < 0:
        parser.error(f"--devices must be >= 0 (0: all), got {args.devices}")
    try:
        devices = select(args.platform, args.devices or None)
    except ValueError as error:
        parser.error(str(error))
    if args.platform is not None:
        jax.config.update("jax_default_device", devices[0])
    if args.platform is None and len(devices) == 1:
        return None
    return devices
