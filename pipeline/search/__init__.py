"""Search: global embeddings of a region store (and caption store) in Parquet + faiss
(:mod:`pipeline.search.embeddings`), text → images and image → captions queries, and pictures
of the results (:mod:`pipeline.search.render`)."""
