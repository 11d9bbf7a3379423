//! The character-level LSTM (SPEC §1): its corpus, training and generation.

pub mod data;
pub mod generate;
pub mod train;

pub use data::CharCorpus;
pub use generate::CharGenerator;
pub use train::{TextTrainOptions, train_char_lstm};
