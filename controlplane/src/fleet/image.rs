//! Kairos image references in all three tag grammars.
