"""Storage quotas: the archive's size, studies and patients, kept within limits at ingest.

Every object is admitted here after its checks and before its commit
(ingest.py). When it would take the archive over a limit, the policy says
what happens:

  reject   it is refused with 0xA700 (Out of Resources) and an Error Comment
           naming the limit; STOW-RS answers 507 when nothing was stored.
  recycle  the least recently received unprotected studies are removed
           (removal.py, as `dicomnode delete` removes) until it fits; for
           max_patients, whole patients, least recently received first. When
           nothing may be removed, it is refused as under reject.

What is guaranteed, with several stores at once (associations, STOW parts,
the group commit behind them): within one process, admission is serialised
and objects admitted but not yet committed are counted as already there, so
the limits hold exactly; recycling never takes the study an object is being
received into, nor any study with an object between admission and commit.
Across processes (the DICOMweb process, `import`, the worker) each counts
what is committed, so a limit can be passed by the objects the others have
in flight. A study recycled in one process while another receives into it is
removed only if nothing arrived in it since it was chosen (Index.recycle);
an object that is still in flight then makes a study of its own again, with
a consistent index. As the least recently received study goes first, a
study being received is the last one chosen anyway.

Sizes are file sizes as indexed; the archive's total is a counter kept in
the index transactions (rows.py), so admitting an object costs one statement
of indexed reads (and a count of studies or patients for a new one).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from enum import Enum

from dicomnode.storage.archive import removal
from dicomnode.storage.archive.layout import Layout
from dicomnode.storage.audit import AuditLog
from dicomnode.storage.index.rows import Candidate, Index

log = logging.getLogger("dicomnode.quota")

GIB = 1 << 30
ROUNDS_WITHOUT_PROGRESS = 3  # candidates that changed before they could be recycled, asked again this often


class QuotaPolicy(str, Enum):
    REJECT = "reject"
    RECYCLE = "recycle"


@dataclass(frozen=True)
class Limits:
    """The quotas of the settings ([storage]); 0 is no limit."""

    max_size_gb: float = 0.0
    max_studies: int = 0
    max_patients: int = 0
    policy: QuotaPolicy = QuotaPolicy.REJECT

    @property
    def max_bytes(self) -> int:
        return int(self.max_size_gb * GIB)

    @property
    def any(self) -> bool:
        return bool(self.max_bytes or self.max_studies or self.max_patients)

    def shown(self, name: str) -> str:
        """A limit as its setting reads, e.g. `max_size_gb = 0.001`."""
        return f"{name} = {getattr(self, name):g}"


@dataclass(frozen=True)
class Arrival:
    """What the quotas need to know of an object about to be committed."""

    study: str
    patient: tuple[str, str]  # (PatientID, IssuerOfPatientID), the patient row's identity
    sop_instance: str
    size: int


@dataclass
class Admission:
    """The answer for one object: refused (with the Error Comment), or admitted and counted as in
    flight until released after its commit."""

    refused: str = ""
    arrival: Arrival | None = None
    new_study: bool = False
    new_patient: bool = False


class Quota:
    """Admission against the limits, and recycling; one per ingester (so per process)."""

    def __init__(self, layout: Layout, index: Index, limits: Limits, replaces: bool = False,
                 audit: AuditLog | None = None) -> None:
        self.layout = layout
        self.index = index
        self.limits = limits
        self.audit = audit
        self.replaces = replaces  # duplicates = overwrite: a known SOP Instance UID still takes room
        self.recycled = 0  # studies this process recycled (the index counts them all: stats)
        self._lock = threading.Lock()
        self._flight: dict[int, Admission] = {}  # admitted, not yet released (a few dozen at most)

    def admit(self, a: Arrival) -> Admission:
        """Admit an object (recycling first under that policy) or refuse it; see the module's docstring."""
        with self._lock:
            idle = 0
            while True:
                over, adm = self._measure(a)
                if over is None:
                    self._flight[id(adm)] = adm
                    return adm
                if not self.replaces and self.index.instance_path(a.sop_instance) is not None:
                    return Admission()  # a duplicate: kept or refused by the duplicate policy, no room taken
                if over == "max_size_gb" and a.size > self.limits.max_bytes:
                    return self._refuse(a, f"object larger than the quota ({self.limits.shown(over)})")
                if self.limits.policy is QuotaPolicy.REJECT:
                    return self._refuse(a, f"storage quota reached: {self.limits.shown(over)} (policy reject)")
                freed = self._recycle(a, over)
                if freed is None:
                    return self._refuse(a, f"storage quota reached: {self.limits.shown(over)}; nothing to recycle")
                idle = 0 if freed else idle + 1
                if idle >= ROUNDS_WITHOUT_PROGRESS:
                    return self._refuse(a, f"storage quota reached: {self.limits.shown(over)}; "
                                        "recycling made no room")

    def release(self, adm: Admission) -> None:
        """The admitted object is committed (now counted by the index) or failed."""
        with self._lock:
            self._flight.pop(id(adm), None)

    def _measure(self, a: Arrival) -> tuple[str | None, Admission]:
        """The first limit the object would pass (None: it fits), and its admission.

        Objects in flight count as stored. Those whose commit is done but
        not yet released would count twice, in the index and in flight: when
        that makes the object seem not to fit, the in-flight ones the index
        holds already are left out and it is measured again (asked in that
        order, an object committed in between counts twice, never nowhere).
        """
        over, adm = self._over(a, set())
        if over is not None and self._flight:
            over, adm = self._over(a, set(self.index.stored_files([f.sop_instance for f, _ in self._flying()])))
        return over, adm

    def _flying(self) -> list[tuple[Arrival, Admission]]:
        return [(f.arrival, f) for f in self._flight.values() if f.arrival is not None]

    def _over(self, a: Arrival, committed: set[str]) -> tuple[str | None, Admission]:
        lim, flying = self.limits, self._flying()
        pending = [(f, adm) for f, adm in flying if f.sop_instance not in committed]
        adm = Admission(arrival=a)
        size, study_known, patient_known = self.index.footprint(a.study, a.patient)
        if lim.max_bytes and size + sum(f.size for f, _ in pending) + a.size > lim.max_bytes:
            return "max_size_gb", adm
        if lim.max_studies and a.study not in {f.study for f, _ in flying} and not study_known:
            adm.new_study = True
            fresh = {f.study for f, other in pending if other.new_study}
            if self.index.count("STUDY") + len(fresh) >= lim.max_studies:
                return "max_studies", adm
        if lim.max_patients and a.patient not in {f.patient for f, _ in flying} and not patient_known:
            adm.new_patient = True
            fresh_patients = {f.patient for f, other in pending if other.new_patient}
            if self.index.count("PATIENT") + len(fresh_patients) >= lim.max_patients:
                return "max_patients", adm
        return None, adm

    def _recycle(self, a: Arrival, over: str) -> int | None:
        """Remove the next least recently received unprotected study (or patient's studies); the
        instances removed (0 when the candidates changed meanwhile), None when there is none."""
        avoid = {f.study for f, _ in self._flying()} | {a.study}
        chosen = self.index.oldest_patient(avoid) if over == "max_patients" else self.index.oldest_studies(avoid, 1)
        if not chosen:
            return None
        removed = 0
        for seen in chosen:
            removed += self._recycle_study(seen, over)
        return removed

    def _recycle_study(self, seen: Candidate, over: str) -> int:
        done = removal.recycle(self.layout, self.index, seen)
        if done is None:
            return 0
        self.recycled += 1
        log.warning("recycled study %s: %d instance(s), %d bytes (%s reached; %d recycled since start)",
                    seen.StudyInstanceUID, done.instances, done.bytes, self.limits.shown(over), self.recycled)
        if self.audit is not None:
            self.audit.record("delete", uid=seen.StudyInstanceUID, by="recycling", reason=self.limits.shown(over),
                              instances=done.instances, bytes=done.bytes)
        return done.instances

    def _refuse(self, a: Arrival, comment: str) -> Admission:
        log.debug("refused %s (%d bytes) of study %s: %s", a.sop_instance, a.size, a.study, comment)
        return Admission(refused=comment)
