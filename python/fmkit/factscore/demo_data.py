"""The demo's bundled data: twelve short biographies of invented people (so that no real person
is misdescribed and every fact's truth is known), and generations about eight of them whose
atomic facts are labelled supported (True) or not (False) against those biographies."""

ARTICLES = [
    {"title": "Mara Velden", "text": [
        "Mara Velden (born 1968 in Tarnby) is a marine biologist. She studied biology at the University of Oskeld.",
        "Velden spent ten years studying kelp forests along the Caldra coast. In 2005 she founded the Tarnby Reef "
        "Institute, which she directed until 2019.",
        "She has written two books about coral reefs. She lives in Port Quill with her husband, a ferry captain."]},
    {"title": "Tomas Rienzi", "text": [
        "Tomas Rienzi (1931-2002) was a test pilot and astronaut from Velmora. He joined the air force in 1952.",
        "In 1966 Rienzi was selected for astronaut training. He flew on two orbital missions, in 1971 and 1975.",
        "After retiring he taught physics at a high school in Velmora. He was married twice and had three sons."]},
    {"title": "Ilse Brandt", "text": [
        "Ilse Brandt (born 1979) is a film director from Brightwater. She began by directing short films.",
        "Her first feature film, Salt Lines, premiered in 2010 and won the jury prize at the Caldra Film Festival.",
        "Brandt has directed four feature films. She also teaches screenwriting at the Brightwater Film School."]},
    {"title": "Oren Kask", "text": [
        "Oren Kask (born 1951) is a retired engineer and cosmonaut. He was born in Oskeld.",
        "Kask worked as a flight engineer on the second lunar survey mission in 1983.",
        "He later designed water recycling systems for space stations. Kask enjoys chess and plays the accordion."]},
    {"title": "Lucia Ferran", "text": [
        "Lucia Ferran (born 1962) is a composer and conductor. She was born in Port Quill.",
        "Ferran led the Northvale Symphony Orchestra from 1995 to 2006. She has composed three operas.",
        "Her opera The Glass Orchard premiered in 2001. She received the Velmora Music Medal in 2012."]},
    {"title": "Anika Solberg", "text": [
        "Anika Solberg (born 1985) is a chemist from Tarnby. She studied chemistry at the University of Tarn.",
        "Solberg worked as a patent examiner for six years. She now develops batteries at a company in Oskeld.",
        "She holds eleven patents on battery electrolytes. Solberg is a keen long-distance runner."]},
    {"title": "Piet Arlo", "text": [
        "Piet Arlo (1940-2016) was a novelist from Caldra. He worked as a newspaper editor before writing fiction.",
        "Arlo wrote nine novels. Two of them, The Long Ferry and Winter Orchard, were adapted for television.",
        "He won the Caldra Book Prize in 1988. Arlo spent his last years in a fishing village."]},
    {"title": "Kenji Moravec", "text": [
        "Kenji Moravec (born 1966) is a former football midfielder. He was born in Sestra.",
        "Moravec played for Sestra United from 1987 to 1995 and scored 41 league goals.",
        "After retiring he coached the club's youth team. He later opened a sports shop in Sestra."]},
    {"title": "Dalia Oyelaran", "text": [
        "Dalia Oyelaran (born 1974) is a politician. She trained as a lawyer in Brightwater.",
        "Oyelaran was elected mayor of Port Quill in 2016 and re-elected in 2020.",
        "As mayor she expanded the city's tram network. She speaks four languages."]},
    {"title": "Rui Castelo", "text": [
        "Rui Castelo (born 1958) is a painter from Velmora. He is known for large murals of harbour workers.",
        "Castelo studied at the Velmora Academy of Arts. His largest mural covers a grain silo in Caldra.",
        "He has exhibited in nine countries. Castelo also illustrates children's books."]},
    {"title": "Hale Brennaby", "text": [
        "Hale Brennaby (born 1990) is a cellist from Oskeld. She began playing the cello at age six.",
        "Brennaby won the Northvale Cello Competition in 2012. She plays in the Oskeld String Quartet.",
        "She has recorded five albums of chamber music."]},
    {"title": "Goran Fennick", "text": [
        "Goran Fennick (1925-1999) was an architect from Tarnby. He designed the Tarnby central library.",
        "Fennick built more than forty houses in the Caldra valley. He taught architecture for twenty years.",
        "He was an amateur astronomer and discovered a comet in 1961."]},
]

# (topic, generation, [(atomic fact, supported by the article?)])
GENERATIONS = [
    ("Mara Velden", "Mara Velden is a marine biologist born in Tarnby. She founded the Tarnby Reef Institute in 2005. "
     "She has won an Olympic medal in rowing.", [
        ("Mara Velden is a marine biologist.", True), ("Mara Velden was born in Tarnby.", True),
        ("Mara Velden founded the Tarnby Reef Institute.", True), ("Mara Velden founded the institute in 2005.", True),
        ("Mara Velden won an Olympic medal in rowing.", False), ("Mara Velden lives in Velmora.", False)]),
    ("Tomas Rienzi", "Tomas Rienzi was an astronaut who flew on two orbital missions. He later became a surgeon.", [
        ("Tomas Rienzi was an astronaut.", True), ("Tomas Rienzi flew on two orbital missions.", True),
        ("Tomas Rienzi became a surgeon.", False), ("Tomas Rienzi was born in Oskeld.", False),
        ("Tomas Rienzi was a test pilot.", True)]),
    ("Ilse Brandt", "Ilse Brandt is a film director whose first feature, Salt Lines, premiered in 2010.", [
        ("Ilse Brandt is a film director.", True), ("Salt Lines was Ilse Brandt's first feature film.", True),
        ("Salt Lines premiered in 2010.", True), ("Ilse Brandt has directed twelve feature films.", False),
        ("Ilse Brandt is a professional tennis player.", False)]),
    ("Lucia Ferran", "Lucia Ferran is a composer who led the Northvale Symphony Orchestra.", [
        ("Lucia Ferran is a composer.", True), ("Lucia Ferran led the Northvale Symphony Orchestra.", True),
        ("Lucia Ferran has composed three operas.", True), ("Lucia Ferran was born in Sestra.", False),
        ("Lucia Ferran is a chemist.", False)]),
    ("Anika Solberg", "Anika Solberg is a chemist who studied at the University of Tarn.", [
        ("Anika Solberg is a chemist.", True), ("Anika Solberg studied at the University of Tarn.", True),
        ("Anika Solberg worked as a patent examiner.", True), ("Anika Solberg is a professional footballer.", False),
        ("Anika Solberg was born in 1950.", False)]),
    ("Kenji Moravec", "Kenji Moravec played football for Sestra United and later coached its youth team.", [
        ("Kenji Moravec played for Sestra United.", True), ("Kenji Moravec coached the youth team.", True),
        ("Kenji Moravec was a goalkeeper.", False), ("Kenji Moravec was born in Sestra.", True),
        ("Kenji Moravec is an opera singer.", False)]),
    ("Dalia Oyelaran", "Dalia Oyelaran was elected mayor of Port Quill in 2016.", [
        ("Dalia Oyelaran was elected mayor of Port Quill.", True), ("Dalia Oyelaran was elected in 2016.", True),
        ("Dalia Oyelaran trained as a lawyer.", True), ("Dalia Oyelaran was an astronaut.", False),
        ("Dalia Oyelaran closed the tram network.", False)]),
    ("Goran Fennick", "Goran Fennick was an architect who designed the Tarnby central library.", [
        ("Goran Fennick was an architect.", True), ("Goran Fennick designed the Tarnby central library.", True),
        ("Goran Fennick discovered a comet.", True), ("Goran Fennick was a cellist.", False),
        ("Goran Fennick designed a bridge in Velmora.", False)]),
]

# Sentences whose atomic facts the demo generates with the LM (shown beside their decisions).
GENERATION_SENTENCES = [
    ("Rui Castelo", "Rui Castelo is a painter from Velmora who is known for murals of harbour workers."),
    ("Piet Arlo", "Piet Arlo was a novelist who wrote nine novels and won an Olympic gold medal."),
]
