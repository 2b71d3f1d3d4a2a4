//! Field numbers of descriptor.proto: the steps of a `SourceCodeInfo`
//! location path, shared by the descriptor tests.
#![allow(dead_code)]

pub const FILE_MESSAGE_TYPE: i32 = 4;
pub const FILE_ENUM_TYPE: i32 = 5;
pub const FILE_SERVICE: i32 = 6;
pub const MESSAGE_FIELD: i32 = 2;
pub const MESSAGE_NESTED_TYPE: i32 = 3;
pub const MESSAGE_ENUM_TYPE: i32 = 4;
pub const MESSAGE_ONEOF_DECL: i32 = 8;
pub const ENUM_VALUE: i32 = 2;
pub const SERVICE_METHOD: i32 = 2;
