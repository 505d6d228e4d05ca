"""Seeds that span several machines: machine 0 decides, every machine follows.

A seed on ``--num-machines M`` runs when each machine's launcher starts its processes for
it. Machine 0's launcher alone takes the seed's lock (and checks that it is not finished);
it publishes its decision, "run" or why not, on a ``torch.distributed.TCPStore`` it serves
at the ``--dist-url`` host on the next port; the other machines' launchers wait for the
decision of each seed they planned and start their processes only for a seed machine 0
runs. So a multi-machine seed holds its lock exactly once, and a machine never waits at
a rendezvous that machine 0 will not join.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from common.cli import ConfigError

RUN = "run"
WAIT = timedelta(hours=24)  # a machine > 0 waits this long for machine 0's next decision


def store_address(dist_url: str) -> tuple[str, int]:
    """(host, port + 1) of ``tcp://host:port``: where machine 0 serves its decisions."""
    if not dist_url.startswith("tcp://") or ":" not in dist_url[6:]:
        raise ConfigError(
            f"--dist-url {dist_url}: several machines need tcp://HOST:PORT of machine 0 "
            "(the same on every machine; PORT and PORT+1 must be free there)"
        )
    host, _, port = dist_url[6:].rpartition(":")
    return host, int(port) + 1


def seed_key(seed_dir: str | Path) -> str:
    """A seed's name that every machine spells alike (its output root may differ)."""
    return "/".join(Path(seed_dir).parts[-4:])


class MachineCoordinator:
    """Machine 0 ``publish``es each seed's decision; machine k > 0 reads it (``decision``)."""

    def __init__(self, dist_url: str, machine_rank: int, num_machines: int):
        from torch.distributed import TCPStore

        host, port = store_address(dist_url)
        self.rank, self.machines = machine_rank, num_machines
        self.store = TCPStore(host, port, is_master=machine_rank == 0, timeout=WAIT,
                              wait_for_workers=False)  # fmt: skip

    def publish(self, seed_dir: str | Path, decision: str) -> None:
        self.store.set(seed_key(seed_dir), decision)

    def decision(self, seed_dir: str | Path) -> str:
        key = seed_key(seed_dir)
        self.store.wait([key])
        return self.store.get(key).decode()

    def close(self) -> None:
        """Machine k > 0 says it has read every decision; machine 0 waits (a minute at
        most) for them before its store goes away."""
        try:
            if self.rank:
                self.store.set(f"done/{self.rank}", "1")
            else:
                others = [f"done/{r}" for r in range(1, self.machines)]
                self.store.wait(others, timedelta(minutes=1))
        except RuntimeError:  # a machine that is gone has nothing left to read
            pass
