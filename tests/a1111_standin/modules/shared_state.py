"""Stand-in of modules.shared_state.State: job bookkeeping and the interrupt flags."""


class State:
    def __init__(self):
        self.interrupted = False
        self.skipped = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.textinfo = None
        self.sampling_step = 0
        self.sampling_steps = 0
        self.current_image = None
        self.jobs: list[str] = []

    def begin(self, job: str = "(unknown)"):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.job_no, self.job_count, self.textinfo = job, 0, 0, None
        self.sampling_step = self.sampling_steps = 0
        self.jobs.append(job)

    def end(self):
        self.job = ""
        self.job_count = 0

    def interrupt(self):
        self.interrupted = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def assign_current_image(self, image):
        self.current_image = image
