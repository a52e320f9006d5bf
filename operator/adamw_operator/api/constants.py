"""Names shared by the CRD, the builders, the operator and the local runner."""

GROUP = "training.adamw.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AdamWTrainingJob"
PLURAL = "adamwtrainingjobs"
SINGULAR = "adamwtrainingjob"
SHORT_NAMES = ["awj", "adamwjob"]

# Labels on every child; lowercase, dash-separated, prefixed with the group.
LABEL_JOB = f"{GROUP}/job-name"
LABEL_RANK = f"{GROUP}/replica-index"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_ROLE = f"{GROUP}/role"
ANNOTATION_CONFIG_HASH = f"{GROUP}/config-hash"

CONTAINER_NAME = "trainer"
CONFIG_KEY = "config.yaml"
CONFIG_MOUNT_DIR = "/etc/adamw"
CONFIG_PATH = f"{CONFIG_MOUNT_DIR}/{CONFIG_KEY}"
# The trainer's working directory: a relative `checkpoint.dir` resolves under it.
WORKING_DIR = "/workspace"
MASTER_PORT = 29500

# Env names the operator sets on every worker; users may not override them.
RESERVED_ENV = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "MASTER_ADDR",
        "MASTER_PORT",
        "NODE_RANK",
        "NNODES",
        "ADAMW_RESTART_COUNT",
        "ADAMW_CHECKPOINT_DIR",
        "ADAMW_JOB_NAME",
        "ADAMW_JOB_NAMESPACE",
        "ADAMW_ATTEMPT",
        "ADAMW_IMAGE",
    }
)
