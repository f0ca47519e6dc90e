from worlds.canvas_mini.tokenizer import build_tokenizer, write_tokenizer_files


def test_truncated_clip_vocab_keeps_clip_ids(tmp_path):
    tok = build_tokenizer(2000)
    assert len(tok) == 256 * 2 + 2000 + 2
    ids = tok("a photo of a cat").input_ids
    # CLIP's ids for the words; the special tokens are the last two entries of the truncated vocab.
    assert ids == [len(tok) - 2, 320, 1125, 539, 320, 2368, len(tok) - 1]
    assert tok.unk_token_id not in tok("A Jellyfish image in Glowing Sunset style.").input_ids[1:-1]


def test_tokenizer_files_load_with_cliptokenizer(tmp_path):
    from transformers import CLIPTokenizer

    write_tokenizer_files(tmp_path, 500)
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(tok) == 256 * 2 + 500 + 2
    # Rare words split into more pieces, never into unk.
    pieces = tok.tokenize("butterfly")
    assert "".join(p.replace("</w>", "") for p in pieces) == "butterfly"
