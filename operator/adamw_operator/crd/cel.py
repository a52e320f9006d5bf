"""Cross-field rules as CEL `x-kubernetes-validations`, keyed by the schema path they sit on.

Standard CEL only (no Kubernetes extensions such as `quantity()`), so the tests can evaluate
them with cel-python. Each mirrors a pydantic validator or a runtime check, so the cluster
refuses at `kubectl apply` what the operator would otherwise report later.
"""

from __future__ import annotations

RULES: dict[str, list[dict[str, str]]] = {
    "spec": [
        {
            "rule": "!has(self.trainer) || !has(self.trainer.device) || "
            "(self.gpusPerReplica == 0 ? self.trainer.device != 'cuda' : self.trainer.device != 'cpu')",
            "message": "trainer.device must match gpusPerReplica: 'cuda' needs gpusPerReplica > 0, "
            "'cpu' needs gpusPerReplica = 0 ('auto' fits both)",
        },
    ],
    "spec.checkpointStorage": [
        {
            "rule": "!(has(self.claimName) && has(self.volumeName))",
            "message": "set either claimName or volumeName, not both",
        },
    ],
    "spec.restartPolicy": [
        {
            "rule": "self.maxBackoffSeconds >= self.backoffSeconds",
            "message": "maxBackoffSeconds must be >= backoffSeconds",
        },
    ],
    "spec.trainer.model": [
        {
            "rule": "self.width % self.heads == 0",
            "message": "width must be divisible by heads",
        },
        {
            "rule": "self.source != 'huggingface' || has(self.huggingface)",
            "message": "model.huggingface is required when model.source is 'huggingface'",
        },
        {
            "rule": "self.source != 'python' || has(self.python)",
            "message": "model.python is required when model.source is 'python'",
        },
    ],
    "spec.trainer.model.huggingface": [
        {
            "rule": "has(self.path) || has(self.config)",
            "message": "model.huggingface needs path (a local model directory) or config (fields of a "
            "known architecture, with model_type)",
        },
        {
            "rule": "!(has(self.path) && has(self.config))",
            "message": "model.huggingface: set either path or config, not both",
        },
    ],
    "spec.trainer.data": [
        {
            "rule": "!(self.source in ['text', 'tokens', 'jsonl', 'parquet', 'hfDisk']) || has(self.path)",
            "message": "data.path is required when data.source is 'text', 'tokens', 'jsonl', "
            "'parquet' or 'hfDisk'",
        },
        {
            "rule": "has(self.promptField) == has(self.completionField)",
            "message": "data.promptField and data.completionField go together: set both for "
            "instruction data, or neither",
        },
    ],
    "spec.trainer": [
        {
            "rule": "!has(self.data) || !(self.data.source in ['jsonl', 'parquet', 'hfDisk']) || "
            "(has(self.data.tokenizer) && has(self.data.tokenizer.path)) || "
            "(has(self.model) && self.model.source == 'huggingface' && has(self.model.huggingface) "
            "&& has(self.model.huggingface.path))",
            "message": "data.tokenizer.path is required when data.source is 'jsonl', 'parquet' or "
            "'hfDisk', unless model.huggingface.path holds the tokenizer",
        },
        {
            "rule": "!has(self.data) || !has(self.model) || "
            "!(self.data.source == 'stdlib' || self.data.source == 'text') || self.model.vocabSize >= 256",
            "message": "byte-level data sources (stdlib, text) need model.vocabSize >= 256",
        },
        {
            "rule": "!has(self.training) || (!has(self.training.targetValidationLoss) && "
            "!has(self.training.earlyStopping)) || !has(self.data) || !has(self.data.evalIntervalSteps) "
            "|| self.data.evalIntervalSteps > 0",
            "message": "training.targetValidationLoss and training.earlyStopping act on validation "
            "loss: they need data.evalIntervalSteps > 0",
        },
        {
            "rule": "!has(self.finetune) || !has(self.finetune.lora) || "
            "(has(self.model) && self.model.source != 'gpt')",
            "message": "finetune.lora needs model.source 'huggingface' or 'python' (the built-in GPT "
            "is trained in full)",
        },
        {
            "rule": "!has(self.model) || self.model.source != 'huggingface' || !has(self.model.huggingface) || "
            "!has(self.model.huggingface.dtype) || self.model.huggingface.dtype == 'float32' || "
            "(has(self.finetune) && has(self.finetune.lora))",
            "message": "model.huggingface.dtype other than float32 needs finetune.lora (only a frozen "
            "base may be low-precision; full training uses float32 weights and precision autocast)",
        },
    ],
    "spec.trainer.optimizer": [
        {
            "rule": "self.betas.all(b, b >= 0.0 && b < 1.0)",
            "message": "betas must each be in [0, 1)",
        },
        {
            "rule": "!has(self.groups) || self.groups.all(g, !(g.name in ['decay', 'no_decay', 'lora']) "
            "&& self.groups.filter(h, h.name == g.name).size() == 1)",
            "message": "optimizer.groups names must be unique and not decay, no_decay or lora",
        },
    ],
}
