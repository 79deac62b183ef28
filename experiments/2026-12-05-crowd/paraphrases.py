groups = [
 ("Use metric units.", "Give it in kilometres and kilograms, not miles.", "I don't use imperial, convert to metric."),
 ("Cite your sources.", "Where did you get that? Link a reference.", "I need to know where this information comes from."),
 ("Don't repeat my question back to me.", "Skip restating what I asked.", "No need to echo my question."),
 ("Put code in code blocks.", "Format the code properly so I can copy it.", "Wrap commands in a code block."),
 ("Be warmer, you sound like a robot.", "A little kindness would be nice.", "So cold. Be friendlier."),
 ("How much does it cost?", "Mention the price.", "Tell me what I'd have to spend."),
 ("Number the steps.", "Give me step 1, step 2 and so on.", "Make it a numbered sequence of steps."),
 ("Say it in Spanish.", "Respond in Spanish please.", "Answer me in Spanish, not English."),
 ("Less formal please.", "Relax the tone.", "You're too stiff."),
 ("Too long.", "Way too wordy.", "Shorter, please."),
]
