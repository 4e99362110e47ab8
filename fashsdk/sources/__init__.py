"""Where images and labels come from: image folders and tar shards, label CSVs, decoding and
the preprocessing every model input goes through (training uses the same function)."""
