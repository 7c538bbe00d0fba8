//! SQLite task store (being written)
