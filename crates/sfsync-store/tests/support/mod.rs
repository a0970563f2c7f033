pub mod backends;
pub mod pg;
