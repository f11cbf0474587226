;; slow.wat — test fixture: a slow echo agent, used to keep a message in
;; flight (drain, timeouts, queueing). The content is a decimal number of
;; milliseconds in ASCII ("200"); the agent busy-waits until caxton.now_ms()
;; has advanced by that much, then replies with the content unchanged.
;; Parsing stops at the first non-digit byte; no digits means no wait.
(module
  (import "caxton" "now_ms" (func $now_ms (result i64)))
  (memory (export "memory") 1)

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

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $ms i64) (local $start i64)
    ;; parse the leading decimal digits
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $parsed
      (loop $digit
        (br_if $parsed (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $parsed (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10))
                                (i64.extend_i32_u (local.get $c))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    ;; busy-wait until now_ms() - start >= ms
    (local.set $start (call $now_ms))
    (block $waited
      (loop $spin
        (br_if $waited (i64.ge_s (i64.sub (call $now_ms) (local.get $start))
                                 (local.get $ms)))
        (br $spin)))
    (i64.or
      (i64.shl (i64.extend_i32_u (local.get $ptr)) (i64.const 32))
      (i64.extend_i32_u (local.get $len))))
)
