"""Label audit: which samples of a data set most likely carry a wrong label (see `core` and `scores`)."""

from fuse_export.audit.core import (DEFAULT_TRAIN_METHOD, AuditOptions, LabelAudit, audit_checkpoint, audit_heads,
                                    audit_split, audit_table, probability_score, rescored, resolve_device,
                                    write_audit_csv)
from fuse_export.audit.scores import (METHODS, aum_score, confident_thresholds, percentile_rank, precision_at_k,
                                      ranking, recall_at_k, roc_auc, threshold_margin)

__all__ = ["DEFAULT_TRAIN_METHOD", "METHODS", "AuditOptions", "LabelAudit", "audit_checkpoint", "audit_heads",
           "audit_split", "audit_table", "aum_score", "confident_thresholds", "percentile_rank", "precision_at_k",
           "probability_score", "ranking", "recall_at_k", "rescored", "resolve_device", "roc_auc", "threshold_margin",
           "write_audit_csv"]
