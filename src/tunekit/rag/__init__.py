"""Retrieval and grounding: index documents, retrieve chunks for a question, cite them in answers.

    readers   .md .txt .html .pdf -> text lines that remember their source line (or PDF page)
    chunk     split at headings, then by size with overlap; each chunk keeps its line range
    embed     all-MiniLM-L6-v2 from its wheel, offline, on the CPU (also used by drift monitoring)
    store     the index: one SQLite file of files, chunks and float32 vectors
    index     build or update it; unchanged files skipped, changed replaced, vanished removed
    retrieve  `Retriever(index).search(query)`: BM25, dense cosine, or both by reciprocal rank fusion
    prompt    `grounded_messages`: numbered sources in the system turn, answer and cite as [n]
    cite      parse and check [n] citations; map them to chunk ids, files and line ranges

Heavy dependencies (bm25s, pypdf, sentence-transformers) are imported where used: `pip install 'tunekit[rag]'`.
"""
