;; a2a_slowecho.wat — test agent: a slow echo that tells what it handled.
;;
;; Every message: waits as many ms as the content's leading digits say (at
;; most 10 s; "150 x" waits 150 ms), then logs "<envelope JSON> <content>"
;; at info level and replies with the content. A FAILURE is logged at once
;; and not answered. A worker killed while it waits loses that message's
;; log line with it, so the log lists the messages it finished.
(module
  (import "caxton" "log"          (func $log (param i32 i32 i32)))
  (import "caxton" "now_ms"       (func $now_ms (result i64)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 96) "\"performative\":\"failure\"")  ;; 24 bytes

  ;; Bump allocator, reset on every caxton_alloc (once per message).
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

  ;; Copy [src, src+len) to dst; returns dst + len.
  (func $copy (param $dst i32) (param $src i32) (param $len i32) (result i32)
    (block $done
      (loop $byte
        (br_if $done (i32.eqz (local.get $len)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $len (i32.sub (local.get $len) (i32.const 1)))
        (br $byte)))
    (local.get $dst))

  ;; Offset of the first [needle, needle+needle_len) in [hay, hay+hay_len), or -1.
  (func $find (param $hay i32) (param $hay_len i32) (param $needle i32) (param $needle_len i32)
              (result i32)
    (local $i i32) (local $j i32)
    (block $none
      (loop $at
        (br_if $none (i32.gt_u (i32.add (local.get $i) (local.get $needle_len)) (local.get $hay_len)))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $byte
            (if (i32.eq (local.get $j) (local.get $needle_len)) (then (return (local.get $i))))
            (br_if $differs
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $i) (local.get $j))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $byte)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $at)))
    (i32.const -1))

  ;; The envelope of the message being handled (message_info's JSON).
  (global $info (mut i32) (i32.const 0))
  (global $info_len (mut i32) (i32.const 0))

  ;; Read the envelope into the heap; 0 if that failed.
  (func $read_info (result i32)
    (local $n i32)
    ;; a zero-length buffer: message_info writes nothing and says how much it needs
    (local.set $n (call $message_info (i32.const 0) (i32.const 0)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (global.set $info (call $bump (local.get $n)))
    (if (i32.eqz (global.get $info)) (then (return (i32.const 0))))
    (global.set $info_len (call $message_info (global.get $info) (local.get $n)))
    (i32.le_s (global.get $info_len) (local.get $n)))

  ;; 1 if the envelope holds these bytes. Inside a JSON string every quote
  ;; is escaped, so '"performative":"failure"' can only be that field.
  (func $info_has (param $lit i32) (param $len i32) (result i32)
    (i32.ge_s (call $find (global.get $info) (global.get $info_len) (local.get $lit) (local.get $len))
              (i32.const 0)))

  ;; "<envelope JSON> <content>": what this agent got, for the test to read.
  (global $line (mut i32) (i32.const 0))
  (global $line_len (mut i32) (i32.const 0))

  ;; Build the line in the heap and log it at info level; 0 if out of memory.
  (func $log_received (param $ptr i32) (param $len i32) (result i32)
    (local $end i32)
    (global.set $line (call $bump (i32.add (i32.add (global.get $info_len) (local.get $len)) (i32.const 1))))
    (if (i32.eqz (global.get $line)) (then (return (i32.const 0))))
    (local.set $end (call $copy (global.get $line) (global.get $info) (global.get $info_len)))
    (i32.store8 (local.get $end) (i32.const 0x20))
    (local.set $end (call $copy (i32.add (local.get $end) (i32.const 1)) (local.get $ptr) (local.get $len)))
    (global.set $line_len (i32.sub (local.get $end) (global.get $line)))
    (call $log (i32.const 1) (global.get $line) (global.get $line_len))
    (i32.const 1))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $ms i64) (local $start i64)
    (if (i32.eqz (call $read_info)) (then (return (i64.const 0))))
    (if (call $info_has (i32.const 96) (i32.const 24))
      (then
        (drop (call $log_received (local.get $ptr) (local.get $len)))
        (return (i64.const 0))))
    ;; the leading digits: how long to take, in ms (at most 10 s)
    (local.set $p (local.get $ptr))
    (local.set $end (i32.add (local.get $ptr) (local.get $len)))
    (block $parsed
      (loop $digit
        (br_if $parsed (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $parsed (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $ms (i64.add (i64.mul (local.get $ms) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (br_if $parsed (i64.ge_u (local.get $ms) (i64.const 10000)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (if (i64.gt_u (local.get $ms) (i64.const 10000)) (then (local.set $ms (i64.const 10000))))
    (local.set $start (call $now_ms))
    (block $waited
      (loop $spin
        (br_if $waited (i64.ge_s (i64.sub (call $now_ms) (local.get $start)) (local.get $ms)))
        (br $spin)))
    ;; logged only now: a message whose handling was cut short leaves no line
    (drop (call $log_received (local.get $ptr) (local.get $len)))
    (call $pack (local.get $ptr) (local.get $len)))
)
