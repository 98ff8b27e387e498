"""The command floor: one module per `gptlab` command, each with main(argv). Only modules here import
gptlab modules inside functions (start-up time: `gptlab budget` never loads torch)."""
