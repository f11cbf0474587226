;; a2a_bouncer.wat — test agent: starts a conversation and keeps it going.
;;
;; From outside (hop count 0 in message_info), content "TO MESSAGE": calls
;; caxton.send(TO, MESSAGE) once and replies with the code send returned.
;; From an agent: logs "<envelope JSON> <content>" at info level; then a
;; FAILURE gets no reply, and anything else is answered with its own
;; content, which the runtime carries back to the sender. Two bouncers (or
;; a bouncer and an echo) so bounce a message between them for ever: only
;; the hop limit, or a FAILURE, ends it.
(module
  (import "caxton" "log"          (func $log (param i32 i32 i32)))
  (import "caxton" "send"         (func $send (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "message_info" (func $message_info (param i32 i32) (result i32)))
  (memory (export "memory") 1)

  (data (i32.const 16) " ")                             ;; 1 byte: splits TO from MESSAGE
  (data (i32.const 96) "\"performative\":\"failure\"")  ;; 24 bytes
  (data (i32.const 128) "\"hops\":")                    ;; 7 bytes

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

  ;; Write $n (unsigned) in decimal at dst; returns the end. At most 10 bytes.
  (func $write_uint (param $dst i32) (param $n i32) (result i32)
    (local $digits i32) (local $m i32) (local $p i32)
    (local.set $m (local.get $n))
    (loop $count
      (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
      (local.set $m (i32.div_u (local.get $m) (i32.const 10)))
      (br_if $count (local.get $m)))
    (local.set $p (i32.add (local.get $dst) (local.get $digits)))
    (loop $digit
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 0x30) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (local.get $n)))
    (i32.add (local.get $dst) (local.get $digits)))

  ;; Write $n (signed) in decimal at dst; returns the end. At most 11 bytes.
  (func $write_int (param $dst i32) (param $n i32) (result i32)
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then
        (i32.store8 (local.get $dst) (i32.const 0x2D))  ;; '-'
        (return (call $write_uint (i32.add (local.get $dst) (i32.const 1))
                                  (i32.sub (i32.const 0) (local.get $n))))))
    (call $write_uint (local.get $dst) (local.get $n)))

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

  ;; The envelope's hop count: 0 for a message from outside (or if missing).
  (func $hops (result i32)
    (local $at i32) (local $p i32) (local $end i32) (local $c i32) (local $n i32)
    (local.set $at (call $find (global.get $info) (global.get $info_len) (i32.const 128) (i32.const 7)))
    (if (i32.lt_s (local.get $at) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $p (i32.add (global.get $info) (i32.add (local.get $at) (i32.const 7))))
    (local.set $end (i32.add (global.get $info) (global.get $info_len)))
    (block $done
      (loop $digit
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 0x30)))
        (br_if $done (i32.ge_u (local.get $c) (i32.const 10)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (local.get $c)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digit)))
    (local.get $n))

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

  ;; Split the content "TO MESSAGE" at its first space: $to_len and the
  ;; message's [$msg, $msg+$msg_len) (empty without a space).
  (global $to_len (mut i32) (i32.const 0))
  (global $msg (mut i32) (i32.const 0))
  (global $msg_len (mut i32) (i32.const 0))

  (func $split (param $ptr i32) (param $len i32)
    (local $space i32)
    (local.set $space (call $find (local.get $ptr) (local.get $len) (i32.const 16) (i32.const 1)))
    (if (i32.lt_s (local.get $space) (i32.const 0))
      (then
        (global.set $to_len (local.get $len))
        (global.set $msg (i32.add (local.get $ptr) (local.get $len)))
        (global.set $msg_len (i32.const 0)))
      (else
        (global.set $to_len (local.get $space))
        (global.set $msg (i32.add (local.get $ptr) (i32.add (local.get $space) (i32.const 1))))
        (global.set $msg_len (i32.sub (local.get $len) (i32.add (local.get $space) (i32.const 1)))))))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $out i32)
    (if (i32.eqz (call $read_info)) (then (return (i64.const 0))))
    (if (call $hops)
      (then
        (drop (call $log_received (local.get $ptr) (local.get $len)))
        (if (call $info_has (i32.const 96) (i32.const 24)) (then (return (i64.const 0))))
        ;; bounce: the reply goes back to whoever sent this
        (return (call $pack (local.get $ptr) (local.get $len)))))
    (call $split (local.get $ptr) (local.get $len))
    (local.set $out (call $bump (i32.const 11)))
    (if (i32.eqz (local.get $out)) (then (return (i64.const 0))))
    (call $pack (local.get $out)
      (i32.sub (call $write_int (local.get $out)
                 (call $send (local.get $ptr) (global.get $to_len) (global.get $msg) (global.get $msg_len)))
               (local.get $out))))
)
