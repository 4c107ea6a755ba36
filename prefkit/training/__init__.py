"""``prefkit train``: the training package (docs/commands.md, "prefkit train"; docs/math.md for the math).

Layout, one job per module:
  config.py       TrainConfig: the common settings plus every objective's own flags, from the table
  table.py        THE TABLE of objectives: name -> data kind, step, paper, defaults, own flags, checks
  objectives/     one module per objective (d3po, dense, diffusion_dpo, ddpo, tdpo): its step class
  step.py         the step interface, and what the trajectory objectives share
  run.py          run_train: the stage, the same for every objective (reads the table)
  engine.py       accelerator, the optimizer loop, accumulation, clipping, checkpoints, resume, metrics
  lora.py         the LoRA: added, saved, loaded, the reference (adapters off) and the sampling adapter
  batch.py        typed batches: winner and loser are named fields, never halves of a tensor
  trajectories.py the trajectory data kinds (labelled pairs, scored samples): datasets, shards, prompts
  images.py       the image-pair data kind (Pick-a-Pic format) for Diffusion-DPO
  stored.py       may stored log-probs stand in for a live recomputation (the start-up measurement)
  recommended.py  a model folder's recommended settings (prefkit_train.json)
  validation.py   validation images every N steps (--validation-prompt, --validation-every)

Adding an objective: its module in objectives/, its loss in prefkit/math/losses.py, its row in table.py.
Importing this package imports no torch: the CLI reads the table and TrainConfig from here.
"""
