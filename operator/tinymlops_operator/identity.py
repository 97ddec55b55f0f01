"""Who the operator is on the cluster, and which of its replicas acts: kopf settings made at start-up.

kopf's defaults name kopf, not us: finalizers `kopf.zalando.org/KopfFinalizerMarker`, events "From kopf",
annotations under `kopf.zalando.org/`. `configure` gives them the project's names.

Two replicas must never both reconcile (both would publish plans and patch status). kopf's peering does
this: every replica keeps an entry (priority, keep-alive) in one ClusterKopfPeering object, and a replica
pauses while a live peer has a higher priority. Equal priorities pause *everyone*, so replicas need
distinct ones: by default a replica's priority is minus its start time in microseconds, so the earliest
replica still running acts and later ones wait, as with a leader lease that stays with its holder. A
replica that stops removes its entry and the next-oldest resumes at once; one that dies is presumed gone
when its keep-alive expires. An explicit priority (TINYMLOPS_PEERING_PRIORITY, e.g. 1 for a debugging
session on a workstation) outranks every automatic one.
"""

from __future__ import annotations

import logging
import time

import kopf

from tinymlops import API_GROUP

FINALIZER = f"{API_GROUP}/operator"
COMPONENT = "tinymlops-operator"  # Events' source and reportingComponent: kubectl describe's "From"
PEERING_LIFETIME_S = 60  # kopf's default: how long a silent peer still counts as alive


def start_priority(now_ns: int | None = None) -> int:
    """The automatic peering priority: earlier starts rank higher (always below any explicit priority >= 0)."""
    return -((time.time_ns() if now_ns is None else now_ns) // 1000)


def configure(settings: kopf.OperatorSettings, *, peering: str | None, priority: int | None, instance: str) -> None:
    """Our names for kopf's finalizer, events and bookkeeping; peering under `peering`, or standalone if None."""
    settings.persistence.finalizer = FINALIZER
    # Our status is the user interface; keep kopf's own bookkeeping in annotations, under our prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=API_GROUP)
    settings.posting.level = logging.INFO  # INFO and up become Kubernetes Events
    settings.posting.reporting_component = COMPONENT
    settings.posting.reporting_instance = instance
    settings.posting.event_name_prefix = f"{COMPONENT}-"
    if peering is None:
        settings.peering.standalone = True
        return
    settings.peering.standalone = False
    # Mandatory: without the CRD or the object a replica waits instead of acting alone beside another.
    settings.peering.mandatory = True
    settings.peering.name = peering
    settings.peering.priority = start_priority() if priority is None else priority
    settings.peering.lifetime = PEERING_LIFETIME_S
    settings.peering.stealth = True  # keep-alives are not news
