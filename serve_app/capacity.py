"""Can a crashed deployment come back? The check ``serve_app.plan`` makes of a config against
the cluster its ``cluster`` section states.

Ray Serve does not preempt: when a replica dies, replicas that autoscaled up meanwhile may hold
what it reserved, and its replacement waits until a downscale frees room (by default 600 s
later). So a config is refused unless, for every deployment, its ``min_replicas`` fit on the
cluster while every other deployment is at its ``max_replicas``.

How it is judged, per deployment ``d``: a node kind ``d``'s replica fits on (per resource:
``CPU``, ``GPU``, custom) must hold ``d``'s ``min_replicas`` plus every other replica that
could be placed there (each other deployment at its ``max_replicas``, if its replica fits on
that kind), counted over the kind's ``count`` nodes. Replicas pinned to other kinds by custom
resources do not count against it, which is what pinning is for; unpinned ones count against
every kind, as Ray may put them all on one node. Replicas that reserve nothing are always
placed. Fragmentation across several nodes of one kind is not modelled: keep per-replica
reservations that divide a node.
"""

from dataclasses import dataclass
from typing import Any

from serve_app.config import AppConfig, ClusterOptions, NodeKind
from serve_app.options import DeploymentOptions

EPSILON = 1e-9  # reservations are sums of decimal fractions


@dataclass(frozen=True)
class Replicas:
    """One deployment's replicas as the scheduler sees them."""

    deployment: str
    need: dict[str, float]  # per replica: CPU, GPU, custom resources (zeros left out)
    min_replicas: int
    max_replicas: int

    def fits_on(self, node: NodeKind) -> bool:
        capacity = node.capacity()
        return all(amount <= capacity.get(name, 0) + EPSILON for name, amount in self.need.items())


def deployments(config: AppConfig, overrides: dict[str, dict[str, Any]]) -> list[Replicas]:
    """Every deployment the config runs (front and models), with the ``deployments``
    overrides of the Serve config applied (``autoscaling_config``, ``num_replicas``,
    ``ray_actor_options``), as Serve applies them."""
    named: list[tuple[str, DeploymentOptions]] = [
        ("ingress", config.ingress),
        ("rate-limiter", config.rate_limiter),
        ("response-store", config.store.deployment),
    ]
    if config.models_that("transcriptions"):
        named.append(("audio-preprocessor", config.audio.deployment))
    named += [(name, group[0].deployment) for name, group in config.deployment_groups().items()]
    return [_replicas(name, options, overrides.get(name, {})) for name, options in named]


def _replicas(name: str, options: DeploymentOptions, override: dict[str, Any]) -> Replicas:
    actor = override.get("ray_actor_options")
    if actor is None:
        actor = {"num_cpus": options.num_cpus, "num_gpus": options.num_gpus}
        actor["resources"] = options.resources
    need = {"CPU": actor.get("num_cpus", 1), "GPU": actor.get("num_gpus", 0)}
    need.update(actor.get("resources") or {})
    scaling = options.autoscaling_config.model_dump()
    if "num_replicas" in override:
        scaling = {
            "min_replicas": override["num_replicas"],
            "max_replicas": override["num_replicas"],
        }
    elif "autoscaling_config" in override:
        scaling = {"min_replicas": 1, "max_replicas": 1, **override["autoscaling_config"]}
    need = {resource: amount for resource, amount in need.items() if amount > 0}
    return Replicas(name, need, scaling["min_replicas"], scaling["max_replicas"])


def starved(replicas: list[Replicas], cluster: ClusterOptions) -> list[str]:
    """Why each deployment that could be left unschedulable could be (empty: none can)."""
    problems = []
    for this in replicas:
        if this.min_replicas == 0 or not this.need:
            continue
        kinds = [node for node in cluster.nodes if this.fits_on(node)]
        if not kinds:
            nodes = ", ".join(f"{n.name}: {_amounts(n.capacity())}" for n in cluster.nodes)
            problems.append(
                f"{this.deployment}: a replica needs {_amounts(this.need)}, more than any node "
                f"kind has ({nodes})"
            )
            continue
        overflows = [_overflow(this, kind, replicas) for kind in kinds]
        if all(overflows):
            problems.append(min(overflows, key=len))
    return problems


def _overflow(this: Replicas, kind: NodeKind, replicas: list[Replicas]) -> str:
    """Empty if ``this``'s min replicas fit on ``kind`` beside every other replica that may be
    placed there at its max; else what is over, and who holds it."""
    holders = [(this, this.min_replicas)]
    holders += [
        (r, r.max_replicas) for r in replicas if r is not this and r.need and r.fits_on(kind)
    ]
    capacity = {name: amount * kind.count for name, amount in kind.capacity().items()}
    for resource in this.need:
        held = [(r, n) for r, n in holders if r.need.get(resource)]
        total = sum(r.need[resource] * n for r, n in held)
        if total > capacity.get(resource, 0) + EPSILON:
            return (
                f"{this.deployment} ({this.min_replicas} x {_amounts(this.need)}) may wait "
                f"forever for {resource} on node kind {kind.name!r} ({kind.count} x "
                f"{_number(kind.capacity().get(resource, 0))}) when the others are at "
                f"max_replicas: {_number(total)} {resource} = "
                + " + ".join(f"{r.deployment} {n} x {_number(r.need[resource])}" for r, n in held)
            )
    return ""


def _amounts(need: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {_number(v)}" for k, v in need.items() if v) + "}"


def _number(value: float) -> str:
    return f"{value:g}"


def check(config: AppConfig, overrides: dict[str, dict[str, Any]]) -> str | None:
    """Raise ``ValueError`` if the config can starve a deployment on the cluster it states;
    return why it was not checked (no ``cluster`` section, or an autoscaling one), else None."""
    if config.cluster is None:
        return (
            "the config states no `cluster`, so the plan cannot check that a crashed "
            "deployment can come back while others are scaled up (see README, Capacity)"
        )
    if config.cluster.autoscaling:
        return (
            "the cluster autoscales, so its size is not known: a replica that does not fit "
            "waits for the autoscaler to add a node (none is checked here)"
        )
    problems = starved(deployments(config, overrides), config.cluster)
    if problems:
        raise ValueError(
            "this config can leave a crashed deployment unschedulable (Serve does not preempt "
            "replicas that scaled up):\n"
            + "".join(f"  - {problem}\n" for problem in problems)
            + "Lower num_cpus/num_gpus or max_replicas, pin deployments to node kinds with "
            "custom resources, or state a bigger cluster."
        )
    return None
