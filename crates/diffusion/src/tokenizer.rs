//! The CLIP BPE tokenizer, built from a repository's `tokenizer/` folder: `tokenizer.json` when
//! present, else `vocab.json` + `merges.txt` (what Stable Diffusion repositories ship), set up
//! as transformers' CLIP converter does.

use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{DiffusionError, Result};

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";
/// CLIP's pre-tokenisation pattern.
const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// A prompt tokenizer that pads and truncates to the text encoder's fixed length.
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    bos: u32,
    eos: u32,
    pad: u32,
    max_len: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("max_len", &self.max_len)
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> DiffusionError {
    DiffusionError::Tokenizer(e.to_string())
}

/// The pad token named in tokenizer_config.json / special_tokens_map.json (`!` for SD 2),
/// or `None` when neither says.
fn configured_pad(dir: &Path) -> Option<String> {
    for file in ["tokenizer_config.json", "special_tokens_map.json"] {
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match v.get("pad_token") {
            Some(serde_json::Value::String(s)) => return Some(s.clone()),
            Some(obj) => {
                if let Some(s) = obj.get("content").and_then(|c| c.as_str()) {
                    return Some(s.to_string());
                }
            }
            None => {}
        }
    }
    None
}

impl ClipTokenizer {
    /// Loads the tokenizer from a diffusers `tokenizer/` folder; `max_len` is the text
    /// encoder's `max_position_embeddings` (77).
    pub fn from_dir(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let tokenizer = if json.is_file() {
            Tokenizer::from_file(&json).map_err(tok_err)?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    return Err(DiffusionError::Tokenizer(format!(
                        "missing {}",
                        f.display()
                    )));
                }
            }
            Self::bpe_from_files(&vocab, &merges)?
        };
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| DiffusionError::Tokenizer(format!("vocabulary lacks {t}")))
        };
        let bos = id(BOS)?;
        let eos = id(EOS)?;
        let pad = match configured_pad(dir) {
            Some(p) => id(&p)?,
            None => eos,
        };
        Ok(ClipTokenizer {
            tokenizer,
            bos,
            eos,
            pad,
            max_len,
        })
    }

    fn bpe_from_files(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let path = |p: &Path| {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| tok_err("non-UTF-8 path"))
        };
        let bpe = BPE::from_file(&path(vocab)?, &path(merges)?)
            .unk_token(EOS.to_string())
            .end_of_word_suffix("</w>".to_string())
            .build()
            .map_err(tok_err)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let normalizer = NormalizerSequence::new(vec![
            NormalizerWrapper::from(NFC),
            NormalizerWrapper::from(
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(tok_err)?,
            ),
            NormalizerWrapper::from(Lowercase),
        ]);
        tokenizer
            .with_normalizer(Some(normalizer))
            .map_err(tok_err)?;
        let pre = PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::from(
                Split::new(
                    SplitPattern::Regex(CLIP_PATTERN.into()),
                    SplitDelimiterBehavior::Removed,
                    true,
                )
                .map_err(tok_err)?,
            ),
            PreTokenizerWrapper::from(ByteLevel::new(false, true, false)),
        ]);
        tokenizer.with_pre_tokenizer(Some(pre));
        Ok(tokenizer)
    }

    /// The padded token ids of `text`: start token, at most `max_len - 2` tokens, end token,
    /// then pad tokens up to `max_len` (transformers' `padding="max_length", truncation=True`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text.trim(), false).map_err(tok_err)?;
        let body = encoding.get_ids();
        let keep = body.len().min(self.max_len.saturating_sub(2));
        let mut ids = Vec::with_capacity(self.max_len);
        ids.push(self.bos);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.eos);
        ids.resize(self.max_len, self.pad);
        Ok(ids)
    }
}
