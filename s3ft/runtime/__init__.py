"""What every stage runs on, below the stages themselves: resumable shard stores, the stage runner,
Ray start-up (owned by `cluster`), and the checks that refuse a run before it starts."""
