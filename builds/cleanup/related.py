"""What deleting some digests of a repository takes along and what it must leave, planned on a graph read just
before (connections/registries/related.py): no I/O here.

Taken along: an index's child manifests; a deleted digest's referrers (signatures, attestations, SBOMs: the
graph's, which counts the manifests of cosign's `sha256-<hex>.sig`, `.att`, `.sbom` tags that the registry
module took), theirs in turn up to a depth; its referrers tag index (`sha256-<hex>`), with the tags that only
exist for it. Left: whatever is kept (the caller says why), whatever a tag that stays points to, every child of
an index that stays, every referrer of a digest that stays. Kept wins: what a kept digest holds is kept, however
it was reached.

Order, and what a crash between two deletions leaves:
- an index before its children: a child is never left missing from an index still in use; a crash leaves
  children that nothing references (garbage the registry's collection can take, never something a later run
  deletes wrongly: they are no longer found at all);
- a subject before its referrers: a crash leaves referrers of a subject that is gone, which the next run finds
  again by the subject's digest (referrers API, tags) and deletes; the other way round, a subject kept after all
  (a tag set meanwhile) would have lost its signatures;
- the referrers tag index last, after the subject and every referrer it lists: until then it is how a registry
  without the referrers API finds them again.
A deletion whose predecessor was not deleted is not made (`related_deletions_run`), and is recorded as the
predecessor's: to retry after a transient error, failed or refused as it was, kept only when it was kept (a
deletion recorded kept is never tried again).

A digest without the form of one (`sha256:<64 hex>`, `sha512:<128 hex>`) is never deleted: asked, it is kept with
why; listed in the graph, it is left out (it would go into a URL path).
"""

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from connections.registries import Deletion, DeletionResult, is_digest
from connections.registries.related import RelatedGraph, cosign_tags, referrers_tag

REFERRER_DEPTH = 3  # referrers of referrers ... followed this deep (connections.registries.related reads as deep)
ASKED = "asked"
NOT_A_DIGEST = "it is not a well-formed digest; nothing is deleted by it"
_DONE = (DeletionResult.DELETED, DeletionResult.GONE)


@dataclass(frozen=True)
class RelatedDeletion:
    digest: str
    why: str  # "asked", "child of index sha256:…", "referrer of sha256:…", ...
    root: str  # the asked digest it goes with
    after: tuple[str, ...] = ()  # deleted (or gone) before it, else it is not deleted


@dataclass
class RelatedPlan:
    stages: list[list[RelatedDeletion]] = field(default_factory=list)  # in order; within a stage, any order
    kept: dict[str, str] = field(default_factory=dict)  # each digest considered and kept → why

    @property
    def deletions(self) -> list[RelatedDeletion]:
        return [deletion for stage in self.stages for deletion in stage]


@dataclass
class _Candidate:
    why: str
    root: str
    kind: str  # "asked", "child", "referrer", "tag index"
    depth: int  # referrers followed from its root
    before: set[str] = field(default_factory=set)  # what must go first


class _Planner:
    def __init__(self, wanted: Iterable[str], kept: dict[str, str], graph: RelatedGraph, depth: int):
        self.wanted, self.kept, self.graph, self.depth = sorted(set(filter(is_digest, wanted))), kept, graph, depth
        self.tags_of: dict[str, set[str]] = defaultdict(set)
        for tag, digest in graph.tags.items():
            self.tags_of[digest].add(tag)
        self.holders: dict[str, set[str]] = defaultdict(set)  # child → indexes that list it
        for index, children in graph.children.items():
            for child in children:
                self.holders[child].add(index)
        self.subjects: dict[str, set[str]] = defaultdict(set)  # referrer → its subjects
        for subject, found in graph.referrers.items():
            for referrer in found:
                self.subjects[referrer].add(subject)
        self.candidates: dict[str, _Candidate] = {}
        self.tag_subjects: dict[str, str] = {}

    # Which digests may go --------------------------------------------------------------------------
    def gather(self) -> None:
        queue = list(self.wanted)
        for digest in self.wanted:
            self.candidates[digest] = _Candidate(ASKED, digest, ASKED, 0)
        while queue:
            digest = queue.pop(0)
            here = self.candidates[digest]
            if here.kind != "tag index":  # its listing is a hint; the verified referrers come with the subject
                for child in self.graph.children.get(digest, ()):
                    queue += self._add(child, f"child of index {digest}", here, "child", here.depth, digest)
            if here.depth >= self.depth:
                continue
            found = self.graph.referrers.get(digest, ())
            cosign = {self.graph.tags.get(tag): tag for tag in cosign_tags(digest)}
            for referrer in found:
                why = f"tag '{cosign[referrer]}' of {digest}" if referrer in cosign else f"referrer of {digest}"
                queue += self._add(referrer, why, here, "referrer", here.depth + 1, digest)
            tag_index = self.graph.tags.get(referrers_tag(digest))
            if tag_index in self.graph.children:  # an index: anything else under that tag is not the schema's
                queue += self._add(tag_index, f"referrers tag index of {digest}", here, "tag index", here.depth + 1,
                                   digest, *found)

    def _add(self, digest: str, why: str, parent: _Candidate, kind: str, depth: int, *before: str) -> list[str]:
        if not is_digest(digest):
            return []
        if digest in self.candidates:
            self.candidates[digest].before.update(b for b in before if b != digest)
            return []
        self.candidates[digest] = _Candidate(why, parent.root, kind, depth, {b for b in before if b != digest})
        return [digest]

    # Which must stay ----------------------------------------------------------------------------
    def settle(self, also: dict[str, str]) -> dict[str, str]:
        """Candidate → why it stays, until nothing more changes (what stays holds more); `also` stays too."""
        self.tag_subjects = {}  # a candidate's referrers and cosign tags → it: they go with it
        for subject in self.candidates:
            for name in (referrers_tag(subject), *cosign_tags(subject)):
                self.tag_subjects[name] = subject
        stays = {digest: why for digest, why in self.kept.items() if digest in self.candidates} | also
        changed = True
        while changed:
            changed = False
            going = set(self.candidates) - set(stays)
            for digest in sorted(going):
                why = self._held(digest, going)
                if why:
                    stays[digest], changed = why, True
                    going.discard(digest)
        return stays

    def _held(self, digest: str, going: set[str]) -> str:
        for index in sorted(self.holders[digest] - going):
            return f"index {index}, which stays, references it"
        for subject in sorted(self.subjects[digest] - going):
            return f"it is a referrer of {subject}, which stays"
        if digest in self.wanted:  # the caller vouched for its tags
            return ""
        for tag in sorted(self.tags_of[digest]):
            if self.tag_subjects.get(tag) not in going:
                return f"tag '{tag}' points to it and stays"
        return ""

    # In which order ------------------------------------------------------------------------------
    def order(self, going: set[str]) -> tuple[list[list[RelatedDeletion]], dict[str, str]]:
        before = {digest: self.candidates[digest].before & going for digest in going}
        stages, done = [], set()
        while len(done) < len(going):
            ready = sorted(d for d in going - done if before[d] <= done)
            if not ready:
                break
            stages.append([RelatedDeletion(d, self.candidates[d].why, self.candidates[d].root,
                                           tuple(sorted(before[d]))) for d in ready])
            done.update(ready)
        # Only a registry's word can make a cycle (content addresses cannot): what cannot be ordered stays.
        stuck = {d: "its deletion cannot be ordered after what references it (a cycle in what the registry says)"
                 for d in going - done}
        return stages, stuck


def related_plan(wanted: Iterable[str], kept: dict[str, str], graph: RelatedGraph, *,
                 depth: int = REFERRER_DEPTH) -> RelatedPlan:
    """The ordered deletions that `wanted` takes along, and why each digest considered is kept.

    `kept`: digest → why, for every digest kept for any reason (a kept build pushed it, a protected tag, an
    uncertain owner): it is never deleted, nor anything it holds. `wanted`'s own tags go with it (the caller
    decided that); any other tag keeps what it points to, unless it is the referrers or cosign tag of a subject
    that goes.
    """
    wanted = list(wanted)
    planner = _Planner(wanted, kept, graph, depth)
    planner.gather()
    stuck: dict[str, str] = {}
    while True:  # what cannot be ordered stays, and holds what it holds
        stays = planner.settle(stuck)
        going = set(planner.candidates) - set(stays)
        stages, more = planner.order(going)
        if not more:
            break
        stuck |= more
    kept_reasons = {digest: NOT_A_DIGEST for digest in wanted if not is_digest(digest)}
    for digest, why in stays.items():
        candidate = planner.candidates[digest]
        kept_reasons[digest] = why if candidate.kind == ASKED else f"{candidate.why}: {why}"
    return RelatedPlan(stages, kept_reasons)


def related_deletions_run(plan: RelatedPlan, delete: Callable[[list[str]], dict[str, Deletion]]
                          ) -> dict[str, Deletion]:
    """Deletes stage by stage with `delete(digests) → digest → Deletion`; a deletion whose predecessor was not
    deleted or gone is not asked: see `_blocked`."""
    outcomes: dict[str, Deletion] = {}
    for stage in plan.stages:
        ready = []
        for item in stage:
            blocked = [d for d in item.after if outcomes[d].result not in _DONE]
            if blocked:
                outcomes[item.digest] = _blocked(item, [outcomes[d] for d in blocked], blocked)
            else:
                ready.append(item.digest)
        if ready:
            answers = delete(ready)
            outcomes.update((digest, answers[digest]) for digest in ready)
    return outcomes


def _blocked(item: RelatedDeletion, answers: list[Deletion], digests: list[str]) -> Deletion:
    """Why `item` was not asked, as what became of what had to go first: failed if any of that failed (retrying
    alone cannot help); refused if any was refused (another connection may delete both; with none left, the
    image's deletion fails); to retry if any is to be retried (the next run may delete it); kept only when all
    of it was kept."""
    results = [answer.result for answer in answers]
    for result, outcome in ((DeletionResult.FAILED, Deletion.failed), (DeletionResult.REFUSED, Deletion.refused),
                            (DeletionResult.RETRY, Deletion.retry)):
        if result in results:
            digest = digests[results.index(result)]
            return outcome(f"{item.why}: not deleted because {digest} was not ({result})")
    return Deletion.kept(f"{item.why}: not deleted because {digests[0]} was not ({results[0]})")


def related_summary(plan: RelatedPlan, outcomes: dict[str, Deletion], root: str) -> str:
    """What went with the asked digest `root`, and what was to go with it but did not, for its record."""
    went, left = [], []
    for item in plan.deletions:
        if item.root != root or item.digest == root or item.digest not in outcomes:
            continue
        outcome = outcomes[item.digest]
        if outcome.result in (DeletionResult.DELETED, DeletionResult.GONE):
            went.append(f"{item.digest} ({item.why})")
        else:
            left.append(f"{item.digest} ({item.why}: {outcome.result}, {outcome.reason})")
    parts = [f"deleted with it: {', '.join(went)}" if went else "",
             f"not deleted with it: {'; '.join(left)}" if left else ""]
    return "; ".join(filter(None, parts))
