"""What a study is and what it concluded: create and resume, warm starts, confirmation, results,
importances, `best_config()`."""
