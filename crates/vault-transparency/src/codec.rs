//! Big-endian, length-prefixed encoding helpers shared by the formats.

/// Appends to a byte vector.
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    /// `u16` length, then the bytes. Callers keep values under 64 KiB.
    pub(crate) fn short(&mut self, v: &[u8]) {
        self.u16(u16::try_from(v.len()).unwrap_or(u16::MAX));
        self.raw(&v[..v.len().min(u16::MAX as usize)]);
    }
    /// `u32` length, then the bytes.
    pub(crate) fn long(&mut self, v: &[u8]) {
        self.0
            .extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.raw(v);
    }
}

/// Reads from a byte slice; every read fails with the field's name.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }
    pub(crate) fn raw(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], &'static str> {
        if self.bytes.len() < n {
            return Err(field);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, &'static str> {
        Ok(self.raw(1, field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, &'static str> {
        let b = self.raw(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, &'static str> {
        let b = self.raw(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, &'static str> {
        let b = self.raw(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub(crate) fn hash(&mut self, field: &'static str) -> Result<[u8; 32], &'static str> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.raw(32, field)?);
        Ok(a)
    }
    pub(crate) fn short(&mut self, field: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u16(field)? as usize;
        self.raw(n, field)
    }
    pub(crate) fn long(&mut self, field: &'static str) -> Result<&'a [u8], &'static str> {
        let n = self.u32(field)? as usize;
        self.raw(n, field)
    }
    pub(crate) fn end(&self) -> Result<(), &'static str> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}
