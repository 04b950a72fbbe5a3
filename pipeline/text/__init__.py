"""Caption tokenization: BERT WordPiece (any Hugging Face tokenizer) and the SCAN/SGRAF word
vocabulary, and the step that turns a collection into a caption store."""
