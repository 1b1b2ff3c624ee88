"""`recserve bench ...`: benchmark harnesses that print ratios against in-run baselines."""
