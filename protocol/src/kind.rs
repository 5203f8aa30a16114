//! The message type tag: the first thing of a frame that is validated, before any JSON is parsed.

/// Every message type on the wire. Responses are the request's value with the high bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Login = 0x01,
    GetDir = 0x02,
    Stat = 0x03,
    Mkdir = 0x04,
    Rmdir = 0x05,
    DeleteFile = 0x06,
    Rename = 0x07,
    SetAttr = 0x08,
    Symlink = 0x09,
    ReadLink = 0x0A,
    Link = 0x0B,
    Mknod = 0x0C,
    UploadFile = 0x0D,
    ProveOwnership = 0x0E,
    QueryChunk = 0x0F,
    UploadChunk = 0x10,
    Download = 0x11,
    StatFs = 0x12,
    Hello = 0x13,

    LoginRes = 0x81,
    GetDirRes = 0x82,
    StatRes = 0x83,
    MkdirRes = 0x84,
    RmdirRes = 0x85,
    DeleteFileRes = 0x86,
    RenameRes = 0x87,
    SetAttrRes = 0x88,
    SymlinkRes = 0x89,
    ReadLinkRes = 0x8A,
    LinkRes = 0x8B,
    MknodRes = 0x8C,
    UploadFileRes = 0x8D,
    ProveOwnershipRes = 0x8E,
    QueryChunkRes = 0x8F,
    UploadChunkRes = 0x90,
    DownloadRes = 0x91,
    StatFsRes = 0x92,
    HelloRes = 0x93,

    /// The error response to any request.
    Error = 0xFF,
}

const RESPONSE_BIT: u8 = 0x80;

impl Kind {
    pub const ALL: [Kind; 39] = [
        Kind::Login,
        Kind::GetDir,
        Kind::Stat,
        Kind::Mkdir,
        Kind::Rmdir,
        Kind::DeleteFile,
        Kind::Rename,
        Kind::SetAttr,
        Kind::Symlink,
        Kind::ReadLink,
        Kind::Link,
        Kind::Mknod,
        Kind::UploadFile,
        Kind::ProveOwnership,
        Kind::QueryChunk,
        Kind::UploadChunk,
        Kind::Download,
        Kind::StatFs,
        Kind::Hello,
        Kind::LoginRes,
        Kind::GetDirRes,
        Kind::StatRes,
        Kind::MkdirRes,
        Kind::RmdirRes,
        Kind::DeleteFileRes,
        Kind::RenameRes,
        Kind::SetAttrRes,
        Kind::SymlinkRes,
        Kind::ReadLinkRes,
        Kind::LinkRes,
        Kind::MknodRes,
        Kind::UploadFileRes,
        Kind::ProveOwnershipRes,
        Kind::QueryChunkRes,
        Kind::UploadChunkRes,
        Kind::DownloadRes,
        Kind::StatFsRes,
        Kind::HelloRes,
        Kind::Error,
    ];

    /// The kind for a wire byte, or `None` for a byte no message uses.
    pub fn from_u8(byte: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == byte)
    }

    pub fn is_request(self) -> bool {
        (self as u8) & RESPONSE_BIT == 0
    }

    /// The kind of the successful response to this request kind.
    pub fn response(self) -> Option<Kind> {
        if !self.is_request() {
            return None;
        }
        Kind::from_u8(self as u8 | RESPONSE_BIT)
    }

    /// Largest payload a frame of this kind may carry after its header (0: none).
    pub fn max_payload(self) -> u32 {
        match self {
            Kind::UploadChunk | Kind::DownloadRes => crate::MAX_PAYLOAD,
            Kind::UploadFile => crate::MAX_INLINE_UPLOAD,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_maps_back_to_itself() {
        for byte in 0..=255u8 {
            if let Some(kind) = Kind::from_u8(byte) {
                assert_eq!(kind as u8, byte);
            }
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(0x14), None);
        assert_eq!(Kind::from_u8(0x80), None);
    }

    #[test]
    fn every_request_has_a_response() {
        for kind in Kind::ALL.iter().filter(|k| k.is_request()) {
            let res = kind.response().expect("response kind");
            assert!(!res.is_request());
        }
        assert_eq!(Kind::Error.response(), None);
    }
}
