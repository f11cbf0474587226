;; info.wat — test fixture for the caxton.message_info import. Replies with
;; the envelope JSON the host wrote for the current message.
;; It first calls message_info with a 4-byte buffer to exercise the
;; "buffer too small" path (the host must return the full length and write
;; nothing), then again with a buffer of the returned length.
;; Replies "error: small buffer was written" if the host wrote into the
;; too-small buffer; no reply if message_info returned a negative value.
(module
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) "error: small buffer was written")  ;; 31 bytes

  ;; Bump allocator: static data lives below 1024, the heap starts there
  ;; and is reset by every caxton_alloc call (once per message).
  (global $heap (mut i32) (i32.const 1024))

  (func $bump (param $len i32) (result i32)
    (local $ptr i32) (local $end i64) (local $have i64)
    (local.set $ptr (global.get $heap))
    (local.set $end (i64.add (i64.extend_i32_u (local.get $ptr))
                             (i64.extend_i32_u (local.get $len))))
    (if (i64.ge_u (local.get $end) (i64.const 0x100000000))
      (then (return (i32.const 0))))
    (local.set $have (i64.shl (i64.extend_i32_u (memory.size)) (i64.const 16)))
    (if (i64.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.wrap_i64
                  (i64.shr_u (i64.add (i64.sub (local.get $end) (local.get $have))
                                      (i64.const 0xFFFF))
                             (i64.const 16))))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (i32.wrap_i64 (local.get $end)))
    (local.get $ptr))

  (func (export "caxton_alloc") (param $len i32) (result i32)
    (global.set $heap (i32.const 1024))
    (call $bump (local.get $len)))

  ;; (ptr << 32) | len
  (func $pack (param $ptr i32) (param $len i32) (result i64)
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $small i32) (local $n i32) (local $buf i32) (local $m i32)
    ;; first call: 4-byte buffer filled with a sentinel
    (local.set $small (call $bump (i32.const 4)))
    (if (i32.eqz (local.get $small)) (then (return (i64.const 0))))
    (i32.store (local.get $small) (i32.const 0xAAAAAAAA))
    (local.set $n (call $message_info (local.get $small) (i32.const 4)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i64.const 0))))
    (if (i32.le_s (local.get $n) (i32.const 4))
      ;; it fitted (tiny envelope): that is the whole answer
      (then (return (call $pack (local.get $small) (local.get $n)))))
    (if (i32.ne (i32.load (local.get $small)) (i32.const 0xAAAAAAAA))
      (then (return (call $pack (i32.const 16) (i32.const 31)))))
    ;; second call: a buffer of exactly the length it asked for
    (local.set $buf (call $bump (local.get $n)))
    (if (i32.eqz (local.get $buf)) (then (return (i64.const 0))))
    (local.set $m (call $message_info (local.get $buf) (local.get $n)))
    (if (i32.lt_s (local.get $m) (i32.const 0)) (then (return (i64.const 0))))
    (if (i32.gt_u (local.get $m) (local.get $n))
      ;; cannot happen for one message; reply with what we have
      (then (local.set $m (local.get $n))))
    (call $pack (local.get $buf) (local.get $m)))
)
