"""One module per training objective, each a step class named in its row of the table
(prefkit/training/table.py)."""
