"""The names of the files and folders inside a run folder, shared by everything that reads or writes one."""

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DATA_META_FILE = "data_meta.json"
