"""The names of the files and folders inside a run folder, shared by everything that reads or writes
one."""

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
DATA_META_FILE = "data_meta.json"
IDEA_DIR = "idea"  # a copy of the source of the run's model idea (its sha256 is in config.json)
