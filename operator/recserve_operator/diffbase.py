"""kopf's diff-base storage, without copying what it throws away.

kopf builds an object's "essence" (its spec, labels and annotations) on every watch
event of every resource it watches, whether or not a change handler needs it. Its build
deep-copies the *whole* body first, ``metadata.managedFields`` and ``status`` included,
then deletes both. For the children the operator watches (Deployments, Services, Jobs,
ModelVariants...), those two are most of the body: in a burst of 200 RecModels (the
operator scale benchmark, py-spy ``--gil``) that copy was a tenth of the operator's CPU
time. This storage hands kopf's own build a body with only the fields it keeps, so the
essence is the same and the copy is of the spec and the kept metadata alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import kopf

# What kopf's build keeps of a body: everything but these top-level keys, and of
# metadata only labels and annotations (kopf then drops some annotations itself). kind
# and ownerReferences are not kept, but name the annotation kopf drops (its own key is
# marked for a Deployment's ReplicaSets), so they are passed on too: both are small.
_DROPPED = frozenset({"apiVersion", "metadata", "status"})
_KEPT_METADATA = ("labels", "annotations", "ownerReferences")


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """:class:`kopf.AnnotationsDiffBaseStorage` with a build that copies only what it keeps."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """The same essence as kopf's build, from a body pared down to what it keeps.

        With extra fields (a handler that asks for a field outside the essence, such as
        one in ``status``), the whole body goes to kopf's build, as before."""
        if extra_fields:
            return super().build(body=body, extra_fields=extra_fields)
        raw = {k: v for k, v in body.items() if k not in _DROPPED}
        metadata = body.get("metadata") or {}
        raw["metadata"] = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
        return super().build(body=kopf.Body(cast(kopf.RawBody, raw)), extra_fields=extra_fields)
