"""Stand-in of modules.call_queue: the lock every generation / extras / API model run holds."""
import threading

queue_lock = threading.Lock()   # A1111: a FIFO lock, not re-entrant
