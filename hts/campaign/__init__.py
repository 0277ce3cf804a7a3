"""Running a campaign: the driver loop and the rooms it delegates to.

``run_campaign`` streams chunks through the stages into the store.  The
driver (:mod:`hts.campaign.driver`) is the loop — backpressure, resume, stage
hand-offs; the jobs it hands off live beside it: elemental references
(:mod:`~hts.campaign.references`), scoring against the hull and the keep rule
(:mod:`~hts.campaign.scoring`), the one task-waiting loop
(:mod:`~hts.campaign.pool`), the teacher's batched queue
(:mod:`~hts.campaign.rescore`), the audit sample and recall warning
(:mod:`~hts.campaign.audit`), the live counts (:mod:`~hts.campaign.stats`), the
DFT phase (:mod:`~hts.campaign.validate`), and the campaign resolved once at
start-up (:mod:`~hts.campaign.resolve`).
"""

from hts.campaign.driver import open_store, run_campaign
from hts.campaign.references import RunError
from hts.campaign.resolve import ResolvedCampaign, preflight, resolve, results_hash
from hts.campaign.stats import RunStats

__all__ = [
    "RunError",
    "ResolvedCampaign",
    "RunStats",
    "open_store",
    "preflight",
    "resolve",
    "results_hash",
    "run_campaign",
]
