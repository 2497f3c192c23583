-- The system message an eval run sent: a candidate is evaluated under the one it was trained
-- with (goal.student_system_message), and gates compare the two. '' = the run sent none;
-- NULL = not known (imported results, runs recorded before this column).
ALTER TABLE eval_runs ADD COLUMN system_message VARCHAR;
